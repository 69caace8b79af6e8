using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Tests.Peers;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>Negotiation and I/O against the reference servers on loopback. Fails (does not skip) when a peer is missing.</summary>
public class NbdClientPeerTests
{
    private static async Task RoundTripAsync(NbdNegotiatedConnection c)
    {
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        await c.WriteAsync(65536, data);
        if (c.Flags.HasFlag(TransmissionFlags.SendFlush)) await c.FlushAsync();
        var back = new byte[data.Length];
        await c.ReadAsync(65536, back);
        Assert.Equal(data, back);
        if (c.Flags.HasFlag(TransmissionFlags.SendWriteZeroes))
        {
            await c.WriteZeroesAsync(65536, 4096);
            var z = new byte[4096];
            await c.ReadAsync(65536, z);
            Assert.All(z, b => Assert.Equal(0, b));
        }
        if (c.Flags.HasFlag(TransmissionFlags.SendTrim)) await c.TrimAsync(65536 + 4096, 65536);
        var beyond = await Assert.ThrowsAsync<NbdCommandException>(() => c.ReadAsync(c.Size, new byte[512]));
        Assert.Equal(NbdError.Invalid, beyond.Error);
    }

    [Fact]
    public async Task Nbdkit_memory_over_tcp_go_info_and_io()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        var info = await NbdClient.GetExportInfoAsync(server.Uri);
        Assert.Equal(64L << 20, info.Size);
        Assert.True(info.CanMultiConn);
        await using var c = await NbdClient.ConnectAsync(server.Uri);
        Assert.Equal(64L << 20, c.Size);
        Assert.False(c.UsedExportNameFallback);
        Assert.True(c.Flags.HasFlag(TransmissionFlags.HasFlags | TransmissionFlags.SendFlush));
        Assert.Null(c.Export.MinimumBlockSize); // the memory plugin sends no NBD_INFO_BLOCK_SIZE
        await RoundTripAsync(c);
    }

    [Fact]
    public async Task Nbdkit_over_unix_socket()
    {
        using var server = PeerServer.NbdkitUnix("memory", "8M");
        await using var c = await NbdClient.ConnectAsync(NbdUri.Parse(server.Uri.ToString()));
        Assert.Equal(8L << 20, c.Size);
        await RoundTripAsync(c);
    }

    [Fact]
    public async Task Nbdkit_over_ipv6_loopback()
    {
        if (!System.Net.Sockets.Socket.OSSupportsIPv6) Assert.Fail("IPv6 is not available on this machine.");
        using var server = PeerServer.NbdkitOn("::1", "memory", "4M");
        Assert.StartsWith("nbd://[::1]:", server.Uri.ToString());
        await using var c = await NbdClient.ConnectAsync(server.Uri);
        Assert.Equal(4L << 20, c.Size);
    }

    [Fact]
    public async Task Nbdkit_host_name_resolves()
    {
        using var server = PeerServer.Nbdkit("memory", "1M");
        await using var c = await NbdClient.ConnectAsync("localhost", server.Port, "");
        Assert.Equal(1L << 20, c.Size);
    }

    [Fact]
    public async Task Nbdkit_list_with_descriptions()
    {
        using var described = PeerServer.Nbdkit("--filter=exportname", "memory", "2M", "exportname=alpha", "exportname=beta", "exportdesc=fixed:the disk", "exportname-list=explicit");
        var exports = await NbdClient.ListExportsAsync(described.Uri);
        Assert.Equal(["alpha", "beta"], exports.Select(e => e.Name));
        Assert.All(exports, e => Assert.Equal(2L << 20, e.Size));
        Assert.All(exports, e => Assert.Equal("the disk", e.Description));
    }

    [Fact]
    public async Task Export_name_fallback_still_connects()
    {
        using var server = PeerServer.Nbdkit("memory", "3M");
        await using var c = await NbdClient.ConnectAsync(server.Uri, new NbdClientOptions { ForceExportName = true });
        Assert.True(c.UsedExportNameFallback);
        Assert.Equal(3L << 20, c.Size);
        await RoundTripAsync(c);
    }

    [Fact]
    public async Task Qemu_nbd_named_export_and_unknown_export()
    {
        using var server = PeerServer.QemuNbd("qdisk", 16L << 20);
        var list = await NbdClient.ListExportsAsync(server.Uri);
        Assert.Equal("qdisk", Assert.Single(list).Name);
        Assert.Equal(16L << 20, list[0].Size);
        await using (var c = await NbdClient.ConnectAsync(server.Uri))
        {
            Assert.Equal(16L << 20, c.Size);
            await RoundTripAsync(c);
        }
        var e = await Assert.ThrowsAsync<NbdExportNotFoundException>(() => NbdClient.ConnectAsync(server.Uri.WithExportName("nope")));
        Assert.Equal("nope", e.ExportName);
    }

    [Fact]
    public async Task Nbd_server_two_named_exports()
    {
        using var server = PeerServer.NbdServer(("alpha", 8L << 20), ("beta", 12L << 20));
        var list = await NbdClient.ListExportsAsync(server.Uri);
        Assert.Equal(["alpha", "beta"], list.Select(e => e.Name).Order());
        // nbd-server 3.24 answers INFO with size 0 (it only sets the size on GO); GO tells the truth.
        await using (var a = await NbdClient.ConnectAsync(server.Uri.WithExportName("alpha")))
        {
            Assert.Equal(8L << 20, a.Size);
            await RoundTripAsync(a);
        }
        await using (var b = await NbdClient.ConnectAsync(server.Uri.WithExportName("beta")))
            Assert.Equal(12L << 20, b.Size);
        await Assert.ThrowsAsync<NbdExportNotFoundException>(() => NbdClient.ConnectAsync(server.Uri.WithExportName("gamma")));
    }

    [Fact]
    public async Task Negotiates_on_a_socket_the_caller_connected()
    {
        using var server = PeerServer.NbdkitUnix("memory", "2M");
        var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await socket.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(server.Uri.SocketPath!));
        await using var c = await NbdClient.NegotiateAsync(socket, server.Uri);
        Assert.Same(socket, c.Socket);
        Assert.Equal(2L << 20, c.Size);
        await RoundTripAsync(c);
    }

    [Fact]
    public async Task Detached_socket_leaves_the_connection_unusable()
    {
        using var server = PeerServer.Nbdkit("memory", "1M");
        var c = await NbdClient.ConnectAsync(server.Uri);
        using var socket = c.DetachSocket();
        Assert.True(socket.Connected);
        Assert.Null(c.Socket);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => c.ReadAsync(0, new byte[512]));
        c.Dispose();
        Assert.True(socket.Connected);
    }
}
