using System.Buffers.Binary;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Tests.Peers;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>Client failures against fake loopback servers: no peer binaries needed.</summary>
public class NbdClientErrorTests
{
    private static byte[] Greeting(ulong second, ushort flags)
    {
        var b = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdMagic.Init);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), second);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(16), flags);
        return b;
    }

    [Fact]
    public async Task Connection_refused_is_typed()
    {
        int port = PeerServer.FreePort();
        var e = await Assert.ThrowsAsync<NbdConnectionRefusedException>(() => NbdClient.ConnectAsync("127.0.0.1", port, "x"));
        Assert.Contains("refused", e.Message);
    }

    [Fact]
    public async Task Missing_unix_socket_is_refused() =>
        await Assert.ThrowsAsync<NbdConnectionRefusedException>(() => NbdClient.ConnectAsync(NbdUri.ForUnix("/nonexistent/nbd.sock")));

    [Fact]
    public async Task Silent_server_times_out()
    {
        using var fake = new FakeServer([]);
        var options = new NbdClientOptions { Timeout = TimeSpan.FromMilliseconds(500) };
        var e = await Assert.ThrowsAsync<NbdTimeoutException>(() => NbdClient.ConnectAsync("127.0.0.1", fake.Port, "x", options));
        Assert.Contains("0.5 s", e.Message);
    }

    [Fact]
    public async Task Caller_cancellation_is_not_a_timeout()
    {
        using var fake = new FakeServer([]);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => NbdClient.ConnectAsync("127.0.0.1", fake.Port, "x", ct: cts.Token));
    }

    /// <summary>
    /// The blocking connect (NbdBlockClient's, which keeps sockets out of the runtime's socket engine) waits in
    /// blocking calls, which only a shutdown of the socket ends: the timeout, the caller's cancellation and a refusal
    /// must still come out as from the asynchronous connect.
    /// </summary>
    [Fact]
    public async Task Blocking_connect_times_out_cancels_and_is_refused_like_the_asynchronous_one()
    {
        using var fake = new FakeServer([]);
        var uri = NbdUri.ForTcp("127.0.0.1", fake.Port, "x");
        var timedOut = await Assert.ThrowsAsync<NbdTimeoutException>(() =>
            NbdClient.ConnectBlockingAsync(uri, new NbdClientOptions { Timeout = TimeSpan.FromMilliseconds(500) }).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("0.5 s", timedOut.Message);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => NbdClient.ConnectBlockingAsync(uri, ct: cts.Token).WaitAsync(TimeSpan.FromSeconds(30)));
        await Assert.ThrowsAsync<NbdConnectionRefusedException>(() => NbdBlockClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", PeerServer.FreePort(), "x")));
        await Assert.ThrowsAsync<NbdConnectionRefusedException>(() => NbdBlockClient.ConnectAsync(NbdUri.ForUnix("/nonexistent/nbd.sock")));
    }

    [Fact]
    public async Task Bad_magic_is_a_protocol_error()
    {
        using var fake = new FakeServer("HTTP/1.1 400 Bad Request\r\n\r\n"u8.ToArray());
        var e = await Assert.ThrowsAsync<NbdProtocolException>(() => NbdClient.ConnectAsync("127.0.0.1", fake.Port, "x"));
        Assert.Contains("not an NBD server", e.Message);
    }

    [Fact]
    public async Task Oldstyle_server_is_named_as_such()
    {
        using var fake = new FakeServer(Greeting(NbdMagic.OldStyle, 0));
        var e = await Assert.ThrowsAsync<NbdProtocolException>(() => NbdClient.ConnectAsync("127.0.0.1", fake.Port, "x"));
        Assert.Contains("oldstyle", e.Message);
    }

    [Fact]
    public async Task Option_error_replies_map_to_typed_exceptions()
    {
        foreach (var (type, check) in new (NbdOptionReplyType, Action<Exception>)[]
        {
            (NbdOptionReplyType.ErrPolicy, e => Assert.IsType<NbdPolicyRefusedException>(e)),
            (NbdOptionReplyType.ErrTlsRequired, e => Assert.IsType<NbdTlsRequiredException>(e)),
            (NbdOptionReplyType.ErrShutdown, e => Assert.IsType<NbdServerShutdownException>(e)),
            (NbdOptionReplyType.ErrUnknown, e => Assert.Equal("nope", Assert.IsType<NbdExportNotFoundException>(e).ExportName)),
            (NbdOptionReplyType.ErrInvalid, e => Assert.Equal(NbdOptionReplyType.ErrInvalid, Assert.IsType<NbdOptionErrorException>(e).ReplyType)),
        })
        {
            using var fake = new FakeServer(Greeting(NbdMagic.IHaveOpt, 3), async s =>
            {
                var buf = new byte[4 + 16 + 4 + 4 + 2 + 4];
                int got = 0;
                while (got < buf.Length) got += await s.ReceiveAsync(buf.AsMemory(got));
                var msg = "because"u8.ToArray();
                var reply = new byte[20 + msg.Length];
                BinaryPrimitives.WriteUInt64BigEndian(reply, NbdMagic.OptionReply);
                BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)NbdOption.Go);
                BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
                BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)msg.Length);
                msg.CopyTo(reply, 20);
                await s.SendAsync(reply);
            });
            var e = await Assert.ThrowsAnyAsync<NbdOptionErrorException>(() => NbdClient.ConnectAsync("127.0.0.1", fake.Port, "nope"));
            check(e);
            Assert.Equal("because", e.ServerMessage);
            Assert.Contains("because", e.Message);
        }
    }
}
