using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Tests.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Hosting;

/// <summary>The host behind the cmdlets and the service: listeners, idempotent starts, stops, local connections.</summary>
public sealed class NbdHostTests : IDisposable
{
    private readonly NbdHost _host = new(HostScope.Process, NullLoggerFactory.Instance);
    private readonly ScratchDirectory _scratch = new();

    public void Dispose()
    {
        _host.Shutdown();
        _scratch.Dispose();
    }

    private static ExportSpec Memory(string name, int port = 0, long size = 1 << 20, string address = "127.0.0.1") =>
        new() { Name = name, MemorySize = size, Listeners = [ListenerSpec.Tcp(address, port)] };

    private ExportInfo Start(ExportSpec spec) => _host.StartExportAsync(spec).GetAwaiter().GetResult().Value;

    private static IReadOnlyList<string> List(NbdUri server) =>
        NbdClient.ListExportsAsync(server).GetAwaiter().GetResult().Select(e => e.Name).Order().ToList();

    [Fact]
    public void Port_zero_is_reported_and_exports_on_one_port_share_the_listener()
    {
        var a = Start(Memory("a"));
        Assert.NotEqual(0, a.Port);
        var b = Start(Memory("b", a.Port));
        Assert.Equal(a.Port, b.Port);
        Assert.Equal($"nbd://127.0.0.1:{a.Port}/a", a.Uri);
        Assert.Equal(["a", "b"], List(NbdUri.ForTcp("127.0.0.1", a.Port)));
        Assert.Equal(HostScope.Process, a.Scope);
        Assert.Equal(Environment.ProcessId, a.ProcessId);
    }

    [Fact]
    public void Exports_on_other_listeners_are_invisible()
    {
        var a = Start(Memory("a"));
        var b = Start(Memory("b"));
        Assert.NotEqual(a.Port, b.Port);
        Assert.Equal(["a"], List(NbdUri.ForTcp("127.0.0.1", a.Port)));
        var e = Assert.ThrowsAny<NbdClientException>(() => NbdClient.ConnectAsync("127.0.0.1", a.Port, "b").GetAwaiter().GetResult());
        Assert.IsType<NbdExportNotFoundException>(e);
    }

    [Fact]
    public void One_export_serves_on_IPv4_IPv6_and_a_Unix_socket_at_once_and_counts_them_together()
    {
        string socket = _scratch.File("dual.sock");
        var spec = new ExportSpec
        {
            Name = "dual",
            MemorySize = 1 << 20,
            Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Tcp("::1", 0), ListenerSpec.Unix(socket)],
        };
        var e = Start(spec);
        Assert.Equal(["127.0.0.1", "::1"], e.ListenAddress);
        Assert.Equal(socket, e.SocketPath);
        Assert.Equal([$"127.0.0.1:{e.Port}", $"[::1]:{e.Port}", socket], e.Listeners);
        var data = new byte[] { 9, 8, 7, 6 };
        using (var v4 = NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", e.Port, "dual")).GetAwaiter().GetResult())
            v4.WriteAsync(0, data).GetAwaiter().GetResult();
        foreach (var uri in new[] { NbdUri.ForTcp("::1", e.Port, "dual"), NbdUri.ForUnix(socket, "dual") })
        {
            using var c = NbdClient.ConnectAsync(uri).GetAwaiter().GetResult();
            var back = new byte[4];
            c.ReadAsync(0, back).GetAwaiter().GetResult();
            Assert.Equal(data, back);
        }
        WaitFor(() => _host.GetExport("dual")!.ClientCount == 0);
        Assert.Equal(3, _host.GetExport("dual")!.TotalConnections);

        // Stopping it closes all three listeners and removes the socket file.
        _host.StopExportAsync("dual", force: false).GetAwaiter().GetResult();
        Assert.False(File.Exists(socket));
        using var probe = new TcpListener(IPAddress.IPv6Loopback, e.Port);
        probe.Start();
    }

    [Fact]
    public void An_export_on_one_listener_of_another_export_sees_only_that_listener()
    {
        string socket = _scratch.File("shared.sock");
        var a = Start(new ExportSpec { Name = "a", MemorySize = 65536, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Unix(socket)] });
        Start(Memory("b", a.Port));
        Assert.Equal(["a", "b"], List(NbdUri.ForTcp("127.0.0.1", a.Port)));
        Assert.Equal(["a"], List(NbdUri.ForUnix(socket)));
        _host.StopExportAsync("a", force: false).GetAwaiter().GetResult();
        Assert.Equal(["b"], List(NbdUri.ForTcp("127.0.0.1", a.Port)));
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public void The_same_definition_again_changes_nothing_and_a_different_one_needs_replace()
    {
        var first = _host.StartExportAsync(Memory("idem")).GetAwaiter().GetResult();
        Assert.True(first.Changed);
        var again = _host.StartExportAsync(Memory("IDEM") with { Name = "idem" }).GetAwaiter().GetResult();
        Assert.False(again.Changed);
        Assert.Equal(first.Value.Port, again.Value.Port);

        var e = Assert.Throws<NbdServerException>(() => _host.StartExportAsync(Memory("idem", size: 2 << 20)).GetAwaiter().GetResult());
        Assert.Equal(NbdServerError.ExportAlreadyExists, e.Reason);
        Assert.Contains("Size 1048576 -> 2097152", e.Message);
        Assert.Equal(1 << 20, _host.GetExport("idem")!.Size);

        var replaced = _host.StartExportAsync(Memory("idem", size: 2 << 20), replace: true).GetAwaiter().GetResult();
        Assert.True(replaced.Changed);
        Assert.Equal(2 << 20, replaced.Value.Size);
        Assert.Single(_host.GetExports());
    }

    [Fact]
    public void Duplicate_names_are_matched_case_insensitively()
    {
        Start(Memory("disk"));
        var e = Assert.Throws<NbdServerException>(() => Start(Memory("DISK", size: 4096)));
        Assert.Equal(NbdServerError.ExportAlreadyExists, e.Reason);
    }

    [Fact]
    public void Stopping_the_last_export_frees_the_port()
    {
        var a = Start(Memory("only"));
        var stopped = _host.StopExportAsync("only", force: false).GetAwaiter().GetResult();
        Assert.Equal("Stopped", stopped.State);
        Assert.True(_host.WhenStopped("only").IsCompleted);
        Assert.Empty(_host.GetExports());
        using var probe = new TcpListener(IPAddress.Loopback, a.Port);
        probe.Start();
    }

    [Fact]
    public void Stop_refuses_while_clients_are_connected_unless_forced()
    {
        var a = Start(Memory("busy"));
        using var connection = NbdClient.ConnectAsync("127.0.0.1", a.Port, "busy").GetAwaiter().GetResult();
        WaitFor(() => _host.GetExport("busy")!.ClientCount == 1);
        var e = Assert.Throws<NbdServerException>(() => _host.StopExportAsync("busy", force: false).GetAwaiter().GetResult());
        Assert.Equal(NbdServerError.ExportBusy, e.Reason);
        _host.StopExportAsync("busy", force: true).GetAwaiter().GetResult();
        Assert.Null(_host.GetExport("busy"));
    }

    [Fact]
    public void Ctrl_C_during_a_forced_stop_still_frees_the_name_and_the_file()
    {
        string path = _scratch.SparseFile("held.img", 1 << 20);
        Start(new ExportSpec { Name = "held", Path = path, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] });
        var a = _host.GetExport("held")!;
        var connection = NbdClient.ConnectAsync("127.0.0.1", a.Port, "held").GetAwaiter().GetResult();
        WaitFor(() => _host.GetExport("held")!.ClientCount == 1);

        // The idle client keeps the drain waiting; Ctrl+C arrives in the middle of it.
        using var ctrlC = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        Assert.ThrowsAny<OperationCanceledException>(() => _host.StopExportAsync("held", force: true, ctrlC.Token).GetAwaiter().GetResult());

        Assert.Null(_host.GetExport("held"));
        Start(Memory("held")); // the name is free again
        connection.Dispose();
        // The interrupted drain still finishes in the background and closes the file.
        WaitFor(() => OpenDescriptorsOn(path) == 0);
    }

    private static int OpenDescriptorsOn(string path) =>
        Directory.GetFiles("/proc/self/fd").Count(fd =>
        {
            try { return new FileInfo(fd).LinkTarget == path; }
            catch (IOException) { return false; }
        });

    [Fact]
    public void Stop_of_an_unknown_export_is_ExportNotFound()
    {
        var e = Assert.Throws<NbdServerException>(() => _host.StopExportAsync("nope", false).GetAwaiter().GetResult());
        Assert.Equal(NbdServerError.ExportNotFound, e.Reason);
    }

    [Fact]
    public void Local_connection_serves_data_without_TCP()
    {
        Start(Memory("local"));
        var (socket, uri) = _host.OpenLocalConnectionAsync("local").GetAwaiter().GetResult();
        Assert.Equal(AddressFamily.Unix, socket.AddressFamily);
        using var connection = NbdClient.NegotiateAsync(socket, uri).GetAwaiter().GetResult();
        var data = Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray();
        connection.WriteAsync(8192, data).GetAwaiter().GetResult();
        var back = new byte[4096];
        connection.ReadAsync(8192, back).GetAwaiter().GetResult();
        Assert.Equal(data, back);
        Assert.Equal(1 << 20, connection.Size);
    }

    [Fact]
    public void Copy_on_write_never_modifies_the_base()
    {
        string file = _scratch.SparseFile("cow.img", 1 << 20);
        var export = Start(new ExportSpec { Name = "cow", Path = file, CopyOnWrite = true, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] });
        Assert.True(export.IsCopyOnWrite);
        Assert.False(export.IsReadOnly);
        using (var c = NbdClient.ConnectAsync("127.0.0.1", export.Port, "cow").GetAwaiter().GetResult())
        {
            c.WriteAsync(0, new byte[] { 1, 2, 3, 4 }).GetAwaiter().GetResult();
            var back = new byte[4];
            c.ReadAsync(0, back).GetAwaiter().GetResult();
            Assert.Equal(new byte[] { 1, 2, 3, 4 }, back);
        }
        _host.StopExportAsync("cow", force: true).GetAwaiter().GetResult();
        Assert.All(File.ReadAllBytes(file).Take(4), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Unix_socket_exports_have_nbd_unix_uris()
    {
        string path = _scratch.File("u.sock");
        var export = Start(new ExportSpec { Name = "u", MemorySize = 65536, Listeners = [ListenerSpec.Unix(path)] });
        Assert.Equal(path, export.SocketPath);
        Assert.Empty(export.ListenAddress);
        Assert.Equal(0, export.Port);
        Assert.StartsWith("nbd+unix:///u?socket=", export.Uri);
        Assert.Equal(["u"], List(NbdUri.ForUnix(path)));
    }

    [Fact]
    public void Allowed_clients_reach_the_server()
    {
        var export = Start(Memory("private") with { AllowedClients = ["10.0.0.0/8"] });
        Assert.Equal(["10.0.0.0/8"], export.AllowedClient);
        Assert.Empty(List(NbdUri.ForTcp("127.0.0.1", export.Port)));
    }

    [Fact]
    public void Bad_definitions_are_argument_errors_and_start_nothing()
    {
        Assert.Throws<ArgumentException>(() => Start(Memory("x", address: "not-an-ip")));
        Assert.Throws<ArgumentException>(() => Start(new ExportSpec { Name = "x", MemorySize = 4096, Listeners = [] }));
        Assert.Throws<ArgumentException>(() => Start(new ExportSpec { Name = "x", MemorySize = 4096, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Tcp("::1", 10809)] }));
        Assert.Throws<ArgumentException>(() => Start(new ExportSpec { Name = "x", Path = "relative.img", Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }));
        Assert.Empty(_host.GetExports());
    }

    [Fact]
    public void A_busy_port_is_AddressInUse_and_leaves_no_half_started_export()
    {
        using var blocker = new TcpListener(IPAddress.Loopback, 0);
        blocker.Start();
        int port = ((IPEndPoint)blocker.LocalEndpoint).Port;
        string socket = _scratch.File("half.sock");
        var spec = new ExportSpec { Name = "x", MemorySize = 4096, Listeners = [ListenerSpec.Unix(socket), ListenerSpec.Tcp("127.0.0.1", port)] };
        var e = Assert.Throws<NbdServerException>(() => Start(spec));
        Assert.Equal(NbdServerError.AddressInUse, e.Reason);
        Assert.Empty(_host.GetExports());
        Assert.False(File.Exists(socket), "the Unix listener opened before the failure must be closed again");
    }

    [Fact]
    public void Shutdown_stops_everything_warns_about_attached_devices_and_the_host_serves_again()
    {
        var a = Start(Memory("one"));
        string socket = _scratch.File("two.sock");
        Start(new ExportSpec { Name = "two", MemorySize = 4096, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Unix(socket)] });
        // A device attached through any listener of an export is recognised by its backend identifier.
        var warnings = _host.Shutdown(() => [(3, "/dev/nbd3", a.Uri, true), (5, "/dev/nbd5", NbdUri.ForUnix(socket, "two").ToString(), true),
            (6, "/dev/nbd6", "nbd://elsewhere/x", true), (7, "/dev/nbd7", a.Uri, false)]);
        Assert.Equal(2, warnings.Count);
        Assert.Contains(warnings, w => w.StartsWith("/dev/nbd3", StringComparison.Ordinal) && w.Contains("'one'"));
        Assert.Contains(warnings, w => w.StartsWith("/dev/nbd5", StringComparison.Ordinal) && w.Contains("'two'"));
        Assert.Empty(_host.GetExports());
        Assert.True(_host.WhenStopped("one").IsCompleted);
        Assert.Empty(_host.Shutdown());
        var again = Start(Memory("one", a.Port));
        Assert.Equal(a.Port, again.Port);
    }

    [Fact]
    public void A_restarted_export_that_asked_for_any_port_gets_its_old_one_back_when_free()
    {
        var first = Start(Memory("p"));
        _host.StopExportAsync("p", force: false).GetAwaiter().GetResult();
        var again = _host.StartExportAsync(Memory("p"), replace: false, preferredPort: first.Port, CancellationToken.None).GetAwaiter().GetResult().Value;
        Assert.Equal(first.Port, again.Port);
        _host.StopExportAsync("p", force: false).GetAwaiter().GetResult();
        using var taken = new TcpListener(IPAddress.Loopback, first.Port);
        taken.Start();
        var elsewhere = _host.StartExportAsync(Memory("p"), replace: false, preferredPort: first.Port, CancellationToken.None).GetAwaiter().GetResult().Value;
        Assert.NotEqual(first.Port, elsewhere.Port);
    }

    private static void WaitFor(Func<bool> condition)
    {
        var until = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "condition not met in 10 s");
            Thread.Sleep(20);
        }
    }
}
