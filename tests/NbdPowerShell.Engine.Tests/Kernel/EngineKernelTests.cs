using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// Our server under the real kernel driver: attached by our client (netlink and ioctl), by Debian's
/// nbd-client (an independent client, netlink and -nonetlink), and through an in-process socket pair.
/// </summary>
[Trait("Category", "Kernel")]
[Collection("Kernel")]
public sealed class EngineKernelTests : IAsyncLifetime
{
    private const long Size = 256L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-kernel-").FullName;
    private NbdServer _server = null!;
    private IPEndPoint _endPoint = null!;

    public Task InitializeAsync()
    {
        _server = new NbdServer();
        string image = Path.Combine(_dir, "disk.img");
        using (var f = File.Create(image))
            f.SetLength(Size);
        _server.AddExport(new ExportDefinition("disk", FileBlockStore.Open(image, readOnly: false)));
        _server.AddExport(new ExportDefinition("mem", new MemoryBlockStore(64L << 20)));
        _endPoint = _server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _server.StopAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private NbdUri Uri(string export) => NbdUri.ForTcp("127.0.0.1", _endPoint.Port, export);

    [KernelFact]
    public Task Ext4_round_trip_through_netlink_survives_reattach_and_fsck() => Ext4RoundTrip(AttachMode.Netlink);

    [KernelFact]
    public Task Ext4_round_trip_through_ioctl_survives_reattach_and_fsck() => Ext4RoundTrip(AttachMode.Ioctl);

    /// <summary>mkfs, mount, 64 MiB of random data, sync, umount, disconnect, attach again: same hash, fsck clean.</summary>
    private async Task Ext4RoundTrip(AttachMode mode)
    {
        string mnt = Directory.CreateDirectory(Path.Combine(_dir, $"mnt-{mode}")).FullName;
        var data = RandomNumberGenerator.GetBytes(64 << 20);
        var r = await AttachAsync(Uri("disk"), new AttachOptions { Mode = mode });
        Assert.Equal(mode, r.Mode);
        try
        {
            RunOk("mkfs.ext4", "-q", "-F", r.Device);
            RunOk("mount", "-t", "ext4", r.Device, mnt);
            File.WriteAllBytes(Path.Combine(mnt, "data.bin"), data);
            Sync();
            Assert.Contains(mnt, Device(r.Index).MountPoints);
            RunOk("umount", mnt);
        }
        finally
        {
            Run("umount", mnt);
            await DisconnectAndVerifyFreeAsync(r.Index);
        }

        var again = await AttachAsync(Uri("disk"), new AttachOptions { Mode = mode });
        try
        {
            RunOk("fsck.ext4", "-n", "-f", again.Device);
            RunOk("mount", "-t", "ext4", "-o", "ro", again.Device, mnt);
            Assert.Equal(SHA256.HashData(data), SHA256.HashData(File.ReadAllBytes(Path.Combine(mnt, "data.bin"))));
            RunOk("umount", mnt);
        }
        finally
        {
            Run("umount", mnt);
            await DisconnectAndVerifyFreeAsync(again.Index);
        }
        Assert.True(_server.GetExport("disk")!.Io.BytesWritten >= 64L << 20);
    }

    [KernelFact]
    public Task Debian_nbd_client_attaches_our_export_with_netlink() => NbdClientRoundTrip(netlink: true);

    [KernelFact]
    public Task Debian_nbd_client_attaches_our_export_without_netlink() => NbdClientRoundTrip(netlink: false);

    private async Task NbdClientRoundTrip(bool netlink)
    {
        int index = FreeIndex();
        string device = $"/dev/nbd{index}";
        var args = new List<string> { "127.0.0.1", _endPoint.Port.ToString(), device, "-N", "mem", "-b", "4096" };
        if (!netlink)
            args.Add("-nonetlink");
        RunOk("nbd-client", args.ToArray());
        try
        {
            var clock = Stopwatch.StartNew();
            while (Device(index).Size == 0 && clock.Elapsed < TimeSpan.FromSeconds(60))
                await Task.Delay(100);
            var d = Device(index);
            Assert.True(d.IsConnected);
            Assert.Equal(64L << 20, d.Size);
            Assert.False(d.IsOwnedByThisProcess);
            var written = WriteRandom(device, 32L << 20);
            DropCaches();
            Assert.Equal(written, HashDevice(device, 32L << 20));
            Assert.True(_server.GetExport("mem")!.Io.BytesWritten >= 32L << 20, "the writes must have reached our server");
        }
        finally
        {
            RunOk("nbd-client", "-d", device);
            var clock = Stopwatch.StartNew();
            while (Device(index).IsConnected && clock.Elapsed < TimeSpan.FromSeconds(60))
                await Task.Delay(200);
        }
        Assert.False(Device(index).IsConnected);
    }

    [KernelFact]
    public async Task Local_export_attaches_through_an_in_process_socket_pair()
    {
        // No listener involved: one end is served by our server, the other negotiated and given to the kernel.
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        string path = Path.Combine(_dir, "pair.sock");
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
        var serverEnd = listener.Accept();
        File.Delete(path);
        var served = _server.ServeConnectedSocket(serverEnd);

        var c = await NbdClient.NegotiateAsync(client, NbdUri.ForUnix(path, "mem"), Options);
        var r = await new KernelAttacher().AttachAsync([c.DetachSocket()], c.Size, c.Flags, new AttachOptions());
        try
        {
            var written = WriteRandom(r.Device, 16L << 20);
            DropCaches();
            Assert.Equal(written, HashDevice(r.Device, 16L << 20));
            Assert.Contains(_server.GetExport("mem")!.Connections, x => x.ClientAddress == "unix" || x.ClientAddress == "local");
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
        await served.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [KernelFact]
    public async Task Four_connections_to_our_multi_conn_export()
    {
        var r = await AttachAsync(Uri("mem"), new AttachOptions(), connections: 4);
        try
        {
            Assert.Equal(4, r.Connections);
            Assert.Equal(4, _server.GetExport("mem")!.Connections.Count);
            var written = WriteRandom(r.Device, 16L << 20);
            DropCaches();
            Assert.Equal(written, HashDevice(r.Device, 16L << 20));
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }
}
