using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

public class ServerLifecycleTests
{
    [Fact]
    public async Task Exports_can_be_added_and_removed_while_serving()
    {
        await using var server = new TestServer();
        server.Add("first", new ArrayBlockStore(4096));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        server.Add("second", new ArrayBlockStore(8192));
        c.SendOption(NbdOption.Go, RawNbdClient.InfoData("second"));
        Assert.Equal(NbdOptionReplyType.Ack, c.ReadOptionReplies()[^1].Type);
        c.SendRequest(NbdCommand.Read, 4096, 4096);
        Assert.Equal(NbdError.None, c.ReadSimpleReply(4096).Error);
    }

    [Fact]
    public async Task Removing_an_export_with_clients_needs_force_and_then_drops_them()
    {
        await using var server = new TestServer();
        var store = server.Add("busy", new ArrayBlockStore(4096));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("busy");
        var refused = await Assert.ThrowsAsync<NbdServerException>(() => server.Server.RemoveExportAsync("busy", force: false));
        Assert.Equal(NbdServerError.ExportBusy, refused.Reason);
        Assert.False(store.Disposed);

        await server.Server.RemoveExportAsync("busy", force: true);
        Assert.True(c.WaitForClose());
        Assert.True(store.Disposed);
        Assert.Null(server.Server.GetExport("busy"));

        using var d = RawNbdClient.Connect(server.TcpEndPoint);
        d.Greet();
        d.SendOption(NbdOption.Go, RawNbdClient.InfoData("busy"));
        Assert.Equal(NbdOptionReplyType.ErrUnknown, d.ReadOptionReply().Type);
    }

    [Fact]
    public async Task Duplicate_export_names_are_refused()
    {
        await using var server = new TestServer();
        server.Add("x", new ArrayBlockStore(4096));
        var e = Assert.Throws<NbdServerException>(() => server.Add("x", new ArrayBlockStore(4096)));
        Assert.Equal(NbdServerError.ExportAlreadyExists, e.Reason);
    }

    [Fact]
    public async Task Port_in_use_is_a_clear_error()
    {
        await using var server = new TestServer();
        await using var other = new NbdServer();
        var e = Assert.Throws<NbdServerException>(() => other.ListenTcp(server.TcpEndPoint));
        Assert.Equal(NbdServerError.AddressInUse, e.Reason);
        Assert.Contains(server.Port.ToString(), e.Message);
    }

    [Fact]
    public async Task Port_zero_reports_the_chosen_port()
    {
        await using var server = new NbdServer();
        var bound = server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.NotEqual(0, bound.Port);
        Assert.Contains(server.EndPoints, e => e is IPEndPoint ip && ip.Port == bound.Port);
    }

    [Fact]
    public async Task Serves_over_IPv6_loopback()
    {
        if (!Socket.OSSupportsIPv6)
        {
            Assert.Fail("IPv6 is not available on this machine; the IPv6 listener cannot be tested.");
        }
        await using var server = new NbdServer();
        server.AddExport(new ExportDefinition("v6", new ArrayBlockStore(4096)));
        var bound = server.ListenTcp(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        using var c = RawNbdClient.Connect(bound);
        var (size, _) = c.Go("v6");
        Assert.Equal(4096UL, size);
        var stats = server.GetExport("v6")!;
        Assert.StartsWith("[::1]:", Assert.Single(stats.Connections).ClientAddress);
    }

    [Fact]
    public async Task Server_wide_allowlist_drops_other_clients_before_the_handshake()
    {
        await using var server = new TestServer(new NbdServerOptions { AllowedClients = AddressFilter.Parse(new[] { "192.0.2.0/24" }) });
        server.Add("x", new ArrayBlockStore(4096));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        Assert.True(c.WaitForClose());
        // Unix-socket clients have no address; the socket's file mode governs them.
        using var u = RawNbdClient.ConnectUnix(server.SocketPath);
        u.Go("x");
    }

    [Fact]
    public async Task Unix_socket_is_created_owner_only_and_removed_on_stop()
    {
        var server = new TestServer();
        var mode = File.GetUnixFileMode(server.SocketPath);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, mode);
        await server.Server.StopAsync();
        Assert.False(File.Exists(server.SocketPath));
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Stale_unix_socket_file_is_replaced_but_a_live_one_is_in_use()
    {
        var dir = Directory.CreateTempSubdirectory("nbdps-stale-").FullName;
        try
        {
            string path = Path.Combine(dir, "s.sock");
            using (var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
                stale.Bind(new UnixDomainSocketEndPoint(path)); // file left behind, nobody listening
            await using var first = new NbdServer();
            first.ListenUnix(path);
            await using var second = new NbdServer();
            var e = Assert.Throws<NbdServerException>(() => second.ListenUnix(path));
            Assert.Equal(NbdServerError.AddressInUse, e.Reason);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Many_connections_to_one_export_see_each_others_writes()
    {
        await using var server = new TestServer();
        server.Add("shared", new MemoryBlockStore(1 << 20));
        var clients = Enumerable.Range(0, 8).Select(_ => RawNbdClient.Connect(server.TcpEndPoint)).ToList();
        try
        {
            foreach (var c in clients)
                Assert.True(c.Go("shared").Flags.HasFlag(TransmissionFlags.CanMultiConn));
            for (int i = 0; i < clients.Count; i++)
            {
                clients[i].SendRequest(NbdCommand.Write, (ulong)i * 512, 512, payload: Enumerable.Repeat((byte)(i + 1), 512).ToArray());
                Assert.Equal(NbdError.None, clients[i].ReadSimpleReply().Error);
            }
            clients[0].SendRequest(NbdCommand.Flush, 0, 0);
            Assert.Equal(NbdError.None, clients[0].ReadSimpleReply().Error);
            var last = clients[^1];
            last.SendRequest(NbdCommand.Read, 0, 8 * 512);
            var data = last.ReadSimpleReply(8 * 512).Data;
            for (int i = 0; i < 8; i++)
                Assert.All(data.AsSpan(i * 512, 512).ToArray(), b => Assert.Equal(i + 1, b));
            Assert.Equal(8, server.Server.GetExport("shared")!.Connections.Count);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }
}
