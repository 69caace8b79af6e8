using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Service;

/// <summary>
/// The control socket under hostile and busy clients: malformed, oversized and unknown messages get error replies and
/// never hurt the service; stalled clients block nobody; 16 clients at once all get answers; only root gets in.
/// </summary>
public sealed class ControlSocketTests : IAsyncLifetime
{
    private readonly TestService _service = new();
    private readonly ITestOutputHelper _output;

    public ControlSocketTests(ITestOutputHelper output) => _output = output;

    public Task InitializeAsync() => _service.StartInProcessAsync(idleTimeout: TimeSpan.FromSeconds(5));

    public async Task DisposeAsync() => await _service.DisposeAsync();

    private Socket Connect()
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(_service.Paths.ControlSocket));
        return socket;
    }

    private static byte[] Frame(byte[] payload, uint magic = ControlProtocol.Magic, ushort version = ControlProtocol.Version, uint? length = null)
    {
        var frame = new byte[ControlProtocol.HeaderSize + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(frame, magic);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(4), version);
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(8), length ?? (uint)payload.Length);
        payload.CopyTo(frame.AsSpan(ControlProtocol.HeaderSize));
        return frame;
    }

    private static byte[] Json(string text) => Encoding.UTF8.GetBytes(text);

    /// <summary>Sends bytes and returns the error reply (or null when the service just closed), within a bound.</summary>
    private async Task<ControlReply?> SendAsync(byte[] bytes, bool close = false)
    {
        using var socket = Connect();
        await socket.SendAsync(bytes, SocketFlags.None);
        if (close)
            socket.Shutdown(SocketShutdown.Send);
        byte[]? payload;
        try
        {
            payload = await ControlProtocol.ReadFrameAsync(socket, TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(5), CancellationToken.None);
        }
        catch (ControlProtocolException)
        {
            return null;
        }
        return payload is null ? null : JsonSerializer.Deserialize<ControlReply>(payload, ControlProtocol.Json);
    }

    [Fact]
    public async Task Malformed_oversized_and_unknown_messages_get_clear_error_replies()
    {
        var badMagic = await SendAsync(Frame(Json("{}"), magic: 0x12345678));
        Assert.Contains("bad magic", badMagic!.Error!.Message);
        var badVersion = await SendAsync(Frame(Json("{}"), version: 99));
        Assert.Contains("protocol version 99", badVersion!.Error!.Message);
        var tooBig = await SendAsync(Frame([], length: ControlProtocol.MaxPayload + 1));
        Assert.Contains("over the", tooBig!.Error!.Message);
        var notJson = await SendAsync(Frame(Json("{ nope")));
        Assert.Contains("not a JSON request", notJson!.Error!.Message);
        var unknown = await SendAsync(Frame(Json("""{"id":7,"type":"exports.explode"}""")));
        Assert.Equal((7L, ErrorIds.ServiceUnavailable), (unknown!.Id, unknown.Error!.Id));
        Assert.Contains("does not know the request 'exports.explode'", unknown.Error.Message);
        var badBody = await SendAsync(Frame(Json("""{"id":8,"type":"exports.start","body":{"spec":3}}""")));
        Assert.Contains("does not fit", badBody!.Error!.Message);
        var badSpec = await SendAsync(Frame(Json("""{"id":9,"type":"exports.start","body":{"spec":{"name":"x","path":"rel.img","listeners":[{"address":"127.0.0.1","port":0}]},"persistent":true}}""")));
        Assert.Equal(ErrorIds.InvalidArgument, badSpec!.Error!.Id);
        Assert.Empty(_service.Loggers.Errors);
    }

    [Fact]
    public async Task A_fuzz_run_of_malformed_messages_leaves_the_service_serving()
    {
        var random = new Random(9);
        var clock = Stopwatch.StartNew();
        int cases = 0, replies = 0;
        // Not service.stop: it takes no body, so any well-framed one is a legitimate stop.
        string[] types = ["service.status", "exports.start", "exports.stop", "exports.list", "devices.attach", "devices.detach", "devices.list", "x"];
        while (cases < 300 && clock.Elapsed < TimeSpan.FromSeconds(90))
        {
            byte[] bytes = (cases++ % 8) switch
            {
                0 => RandomBytes(random, random.Next(0, 64)),
                1 => Frame(RandomBytes(random, random.Next(0, 256))),
                2 => Frame(Json("{}"))[..random.Next(1, ControlProtocol.HeaderSize + 2)],
                3 => Frame(Json($$"""{"id":{{random.Next()}},"type":"{{types[random.Next(types.Length)]}}","body":{{RandomJson(random)}}}""")),
                4 => Frame(Json(new string('[', 2000) + new string(']', 2000))),
                5 => Frame(Json($$"""{"id":"x","type":{{random.Next()}}}""")),
                6 => Frame(RandomBytes(random, 8), length: (uint)random.Next(9, 5000)),
                _ => Frame(Json("{\"id\":1,\"type\":\"devices.attach\",\"body\":{\"uris\":[\"" + RandomText(random) + "\"],\"connections\":" + random.Next(-5, 50) + "}}")),
            };
            if (bytes.Length > 0 && bytes.Length < ControlProtocol.HeaderSize && random.Next(2) == 0)
                bytes = [.. bytes, .. RandomBytes(random, 3)];
            if (await SendAsync(bytes, close: true) is { Ok: false })
                replies++;
        }
        _output.WriteLine($"CONTROL-FUZZ cases={cases} replies={replies} seconds={clock.Elapsed.TotalSeconds:0.0}");
        Assert.True(cases >= 100, $"only {cases} cases ran");
        Assert.Empty(_service.Loggers.Errors);

        // Still serving: a request works and an export serves data.
        var status = await _service.Client.GetStatusAsync(CancellationToken.None);
        Assert.False(status.IsStopping);
        var export = await _service.Client.StartExportAsync(new ExportSpec { Name = "after", MemorySize = 1 << 20, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] },
            replace: false, persistent: true, CancellationToken.None);
        using var c = await NbdClient.ConnectAsync(NbdUri.Parse(export.Value.Uri));
        await c.WriteAsync(0, new byte[] { 1, 2, 3 });
        Assert.Equal(1 << 20, c.Size);
    }

    private static byte[] RandomBytes(Random random, int n)
    {
        var b = new byte[n];
        random.NextBytes(b);
        return b;
    }

    private static string RandomText(Random random) => new([.. Enumerable.Range(0, random.Next(0, 20)).Select(_ => (char)random.Next(33, 126)).Where(ch => ch is not ('"' or '\\'))]);

    private static string RandomJson(Random random) => random.Next(6) switch
    {
        0 => "null",
        1 => "[]",
        2 => $$"""{"name":"{{RandomText(random)}}","force":{{(random.Next(2) == 0 ? "true" : "1")}}}""",
        3 => $$"""{"spec":{"name":"{{RandomText(random)}}","memorySize":{{random.Next(-10, 10)}},"listeners":[{"address":"{{RandomText(random)}}","port":{{random.Next(-5, 70000)}}}]},"persistent":true}""",
        4 => $$"""{"device":"/dev/nbd{{random.Next(0, 9999)}}","force":true,"timeoutSeconds":{{random.Next(-3, 3)}}}""",
        _ => "\"" + RandomText(random) + "\"",
    };

    [Fact]
    public async Task Sixteen_clients_at_once_all_get_answers_while_two_others_stall()
    {
        using var silent = Connect();
        using var halfFrame = Connect();
        await halfFrame.SendAsync(Frame(Json("""{"id":1,"type":"service.status"}"""))[..5], SocketFlags.None);
        var clock = Stopwatch.StartNew();
        var answers = await Task.WhenAll(Enumerable.Range(0, 16).Select(async i =>
        {
            var status = await _service.Client.GetStatusAsync(CancellationToken.None);
            var exports = await _service.Client.GetExportsAsync(CancellationToken.None);
            return (status.ProcessId, exports.Count);
        }));
        Assert.Equal(16, answers.Length);
        Assert.All(answers, a => Assert.Equal(Environment.ProcessId, a.ProcessId));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"16 clients took {clock.Elapsed.TotalSeconds:0.0} s");
        // The stalled ones are closed by their deadlines (idle 5 s here, frame 10 s).
        var buffer = new byte[64];
        Assert.Equal(0, await silent.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(30)));
        var closing = await ReadUntilClosedAsync(halfFrame).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(closing >= 0);
    }

    private static async Task<int> ReadUntilClosedAsync(Socket socket)
    {
        var buffer = new byte[4096];
        int total = 0;
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None);
            if (n == 0)
                return total;
            total += n;
        }
    }

    [Fact]
    public async Task A_stop_request_is_answered_although_the_stop_begins_before_the_answer_is_written()
    {
        // As in the service process: the stop starts the moment it is requested, racing the reply to service.stop.
        var stopped = _service.Service.StopRequested.ContinueWith(_ => _service.StopInProcessAsync(), TaskScheduler.Default).Unwrap();
        await _service.Client.StopServiceAsync(CancellationToken.None);
        await stopped.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.False(File.Exists(_service.Paths.ControlSocket));
    }

    [RootFact]
    public void The_control_socket_is_root_only_and_other_users_are_refused_by_their_credentials()
    {
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(_service.Paths.ControlSocket));
        // The directories on the way must be traversable for nobody to reach the socket at all.
        foreach (var dir in new[] { _service.Directory, _service.Paths.RuntimeDirectory })
            File.SetUnixFileMode(dir, File.GetUnixFileMode(dir) | UnixFileMode.OtherExecute);
        Assert.Equal("EACCES", AsNobody());
        // With the file permission opened up, SO_PEERCRED still keeps nobody out.
        File.SetUnixFileMode(_service.Paths.ControlSocket, (UnixFileMode)0x1B6);
        string refused = AsNobody();
        Assert.StartsWith("NbdPermissionDenied:", refused);
        Assert.Contains("only root", refused);
        Assert.Contains(_service.Loggers.Messages, m => m.Text.Contains("Refused a control connection from uid 65534"));
    }

    /// <summary>A control client as uid 65534: prints EACCES, or the error id and message of the reply.</summary>
    private string AsNobody()
    {
        const string script = """
            import socket, struct, sys, json
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sys.argv[1])
            except PermissionError:
                print("EACCES"); sys.exit(0)
            body = json.dumps({"id": 1, "type": "service.status"}).encode()
            try:
                s.sendall(struct.pack(">IHHI", 0x4E425053, 1, 0, len(body)) + body)
            except OSError:
                pass
            
            head = b""
            while len(head) < 12:
                chunk = s.recv(12 - len(head))
                if not chunk: print("CLOSED"); sys.exit(0)
                head += chunk
            n = struct.unpack(">IHHI", head)[3]
            data = b""
            while len(data) < n: data += s.recv(n - len(data))
            reply = json.loads(data)
            print(reply["error"]["id"] + ": " + reply["error"]["message"] if not reply["ok"] else "OK")
            """;
        var start = new ProcessStartInfo("/usr/bin/setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, _service.Paths.ControlSocket })
            start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        string output = p.StandardOutput.ReadToEnd().Trim();
        string error = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(30_000));
        Assert.True(p.ExitCode == 0, error);
        return output;
    }
}
