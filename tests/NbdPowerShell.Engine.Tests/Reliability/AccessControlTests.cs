using System.Net;
using System.Net.Sockets;
using System.Text;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Tests.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Reliability;

/// <summary>Access control not covered by the handshake and lifecycle tests: IPv6 prefixes, IPv4-mapped peers, server-wide connection cap, socket mode.</summary>
public class AccessControlTests
{
    private static ExportDefinition Restricted(string name, params string[] allowed) =>
        new(name, new ArrayBlockStore(4096)) { AllowedClients = AddressFilter.Parse(allowed) };

    private static NbdOptionReplyType GoResult(RawNbdClient c, string name)
    {
        c.SendOption(NbdOption.Go, RawNbdClient.InfoData(name));
        return c.ReadOptionReplies()[^1].Type;
    }

    private static List<string> Listed(RawNbdClient c)
    {
        c.SendOption(NbdOption.List, default);
        return c.ReadOptionReplies().Where(r => r.Type == NbdOptionReplyType.Server)
            .Select(r => Encoding.UTF8.GetString(r.Data, 4, (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(r.Data))).ToList();
    }

    [Fact]
    public async Task IPv6_prefixes_admit_and_refuse_per_export_and_in_LIST()
    {
        await using var server = new NbdServer();
        var v6 = server.ListenTcp(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        server.AddExport(Restricted("exact", "::1/128"));
        server.AddExport(Restricted("odd-prefix", "::/127"));        // ::0 and ::1: not a whole number of bytes
        server.AddExport(Restricted("ula", "fd00::/8"));
        server.AddExport(Restricted("v4-only", "127.0.0.0/8"));     // an IPv6 peer is not an IPv4 one
        server.AddExport(Restricted("neighbour", "::2/128"));

        using var c = RawNbdClient.Connect(v6);
        c.Greet();
        Assert.Equal(new[] { "exact", "odd-prefix" }, Listed(c));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, GoResult(c, "ula"));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, GoResult(c, "v4-only"));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, GoResult(c, "neighbour"));
        Assert.Equal(NbdOptionReplyType.Ack, GoResult(c, "odd-prefix"));
    }

    [Fact]
    public async Task Server_wide_IPv6_allowlist_drops_other_IPv6_clients_before_the_handshake()
    {
        await using var refusing = new NbdServer(new NbdServerOptions { AllowedClients = AddressFilter.Parse(new[] { "fe80::/10", "127.0.0.1" }) });
        refusing.AddExport(new ExportDefinition("x", new ArrayBlockStore(4096)));
        using (var c = RawNbdClient.Connect(refusing.ListenTcp(new IPEndPoint(IPAddress.IPv6Loopback, 0))))
            Assert.True(c.WaitForClose());

        await using var admitting = new NbdServer(new NbdServerOptions { AllowedClients = AddressFilter.Parse(new[] { "::1" }) });
        admitting.AddExport(new ExportDefinition("x", new ArrayBlockStore(4096)));
        using var d = RawNbdClient.Connect(admitting.ListenTcp(new IPEndPoint(IPAddress.IPv6Loopback, 0)));
        Assert.Equal(4096UL, d.Go("x").Size);
    }

    [Fact]
    public async Task IPv4_mapped_peers_are_matched_as_IPv4()
    {
        // A dual-stack socket reports an IPv4 client as ::ffff:127.0.0.1.
        using var dual = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
        dual.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        dual.Listen(4);
        int port = ((IPEndPoint)dual.LocalEndPoint!).Port;

        await using var server = new NbdServer();
        server.AddExport(Restricted("v4", "127.0.0.0/8"));
        server.AddExport(Restricted("mapped-prefix", "::ffff:127.0.0.0/104"));
        server.AddExport(Restricted("mapped-address", "::ffff:127.0.0.1"));
        server.AddExport(Restricted("other-v4", "10.0.0.0/8"));
        server.AddExport(Restricted("v6-loopback", "::1"));

        using var c = RawNbdClient.Connect(new IPEndPoint(IPAddress.Loopback, port));
        var accepted = dual.Accept();
        Assert.True(((IPEndPoint)accepted.RemoteEndPoint!).Address.IsIPv4MappedToIPv6);
        var served = server.ServeConnectedSocket(accepted);
        c.Greet();
        Assert.Equal(new[] { "mapped-address", "mapped-prefix", "v4" }, Listed(c));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, GoResult(c, "other-v4"));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, GoResult(c, "v6-loopback"));
        Assert.Equal(NbdOptionReplyType.Ack, GoResult(c, "mapped-prefix"));
        c.SendRequest(NbdCommand.Disconnect, 0, 0);
        await served.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Theory]
    [InlineData("::ffff:10.0.0.0/104", "10.1.2.3", true)]
    [InlineData("::ffff:10.0.0.0/104", "11.0.0.1", false)]
    [InlineData("::ffff:0:0/96", "192.0.2.7", true)]        // every IPv4 address
    [InlineData("::ffff:10.0.0.0/104", "::ffff:10.9.9.9", true)]
    [InlineData("10.0.0.0/8", "::ffff:10.9.9.9", true)]
    [InlineData("10.0.0.0/8", "::10.9.9.9", false)]         // IPv4-compatible (deprecated) is not mapped
    [InlineData("2001:db8::/33", "2001:db8:7fff::1", true)]
    [InlineData("2001:db8::/33", "2001:db8:8000::1", false)]
    public void Address_filter_matches_IPv6_and_IPv4_mapped_prefixes(string entry, string address, bool allowed) =>
        Assert.Equal(allowed, AddressFilter.Parse(new[] { entry }).Allows(IPAddress.Parse(address)));

    [Theory]
    [InlineData("::ffff:10.0.0.0/95")] // shorter than the mapped prefix itself
    [InlineData("::ffff:10.0.0.0/129")]
    [InlineData("10.0.0.0/33")]
    public void Address_filter_rejects_impossible_prefix_lengths(string entry) =>
        Assert.Throws<FormatException>(() => AddressFilter.Parse(new[] { entry }));

    [Fact]
    public async Task Server_wide_connection_limit_closes_the_extra_client_and_frees_the_slot_when_one_leaves()
    {
        await using var server = new TestServer(new NbdServerOptions { MaxConnections = 2 });
        server.Add("x", new ArrayBlockStore(4096));
        using var first = RawNbdClient.Connect(server.TcpEndPoint);
        first.Greet();
        using var second = RawNbdClient.ConnectUnix(server.SocketPath); // the cap covers both listeners and the handshake
        second.Greet();
        Assert.True(ProcessProbe.WaitUntil(() => server.Server.ConnectionCount == 2, TimeSpan.FromSeconds(5)));

        using (var third = RawNbdClient.Connect(server.TcpEndPoint))
            Assert.True(third.WaitForClose(), "a third client was admitted over a limit of 2");

        first.SendOption(NbdOption.Abort, default);
        Assert.Equal(NbdOptionReplyType.Ack, first.ReadOptionReply().Type);
        Assert.True(ProcessProbe.WaitUntil(() => server.Server.ConnectionCount == 1, TimeSpan.FromSeconds(5)));
        using var fourth = RawNbdClient.Connect(server.TcpEndPoint);
        Assert.Equal(4096UL, fourth.Go("x").Size);
    }

    [Fact]
    public async Task Unix_socket_is_created_with_the_mode_asked_for()
    {
        using var scratch = new ScratchDirectory();
        await using var server = new NbdServer();
        server.AddExport(new ExportDefinition("x", new ArrayBlockStore(4096)));
        const UnixFileMode groupToo = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;
        string path = server.ListenUnix(scratch.File("group.sock"), groupToo);
        Assert.Equal(groupToo, File.GetUnixFileMode(path));
        string other = server.ListenUnix(scratch.File("owner.sock"));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(other));
        using var c = RawNbdClient.ConnectUnix(path);
        Assert.Equal(4096UL, c.Go("x").Size);
    }
}
