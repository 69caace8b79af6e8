using System.Diagnostics;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Tests.Peers;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>Attach, I/O and disconnect through the real nbd driver (run inside the test VM).</summary>
[Trait("Category", "Kernel")]
[Collection("Kernel")]
public class KernelAttachTests
{
    private const long Size = 64L << 20;

    [KernelFact]
    public async Task Netlink_attach_round_trips_64MiB_and_is_discoverable()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        var uri = server.Uri.WithExportName("disk one");
        var r = await AttachAsync(uri, new AttachOptions { Mode = AttachMode.Netlink });
        Assert.Equal(AttachMode.Netlink, r.Mode);
        Assert.Equal(4096, r.BlockSize);
        try
        {
            var d = Device(r.Index);
            Assert.True(d.IsConnected);
            Assert.Equal(Size, d.Size);
            Assert.Equal(AttachMode.Netlink, d.Mode);
            Assert.Equal(uri.ToString(), d.BackendIdentifier);
            Assert.Equal("127.0.0.1", d.Host);
            Assert.Equal(server.Port, d.Port);
            Assert.Equal("disk one", d.ExportName);
            Assert.Equal(1, d.Connections);
            Assert.Equal(4096, d.BlockSize);

            var written = WriteRandom(r.Device, Size);
            Assert.Equal(written, HashDevice(r.Device, Size));
            // The data really is on the server, not just in our page cache.
            await using var check = await NbdClient.ConnectAsync(server.Uri, Options);
            var fromServer = new byte[1 << 20];
            await check.ReadAsync(Size - fromServer.Length, fromServer);
            using var fs = new FileStream(r.Device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 0) { Position = Size - fromServer.Length };
            var fromDevice = new byte[fromServer.Length];
            fs.ReadExactly(fromDevice);
            Assert.Equal(fromServer, fromDevice);
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }

    [KernelFact]
    public async Task Ioctl_attach_round_trips_and_frees_the_device()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        var r = await AttachAsync(server.Uri, new AttachOptions { Mode = AttachMode.Ioctl });
        Assert.Equal(AttachMode.Ioctl, r.Mode);
        try
        {
            var d = Device(r.Index);
            Assert.True(d.IsConnected);
            Assert.Equal(AttachMode.Ioctl, d.Mode);
            // The pid file holds the task that called DO_IT: our dedicated thread, not the process id.
            Assert.True(Directory.Exists($"/proc/self/task/{d.Pid}"), $"pid {d.Pid} is not a thread of this process");
            Assert.True(d.IsOwnedByThisProcess);
            var written = WriteRandom(r.Device, Size);
            Assert.Equal(written, HashDevice(r.Device, Size));
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }

    [KernelFact]
    public async Task Nbd_server_named_exports_and_qemu_nbd_attach_at_once()
    {
        using var nbdServer = PeerServer.NbdServer(("alpha", 8L << 20), ("beta", 12L << 20));
        using var qemu = PeerServer.QemuNbd("qdisk", 16L << 20);
        var attached = new List<AttachResult>();
        try
        {
            attached.Add(await AttachAsync(nbdServer.Uri.WithExportName("alpha"), new AttachOptions()));
            attached.Add(await AttachAsync(nbdServer.Uri.WithExportName("beta"), new AttachOptions()));
            attached.Add(await AttachAsync(qemu.Uri, new AttachOptions()));
            Assert.Equal(3, attached.Select(a => a.Index).Distinct().Count());
            Assert.Equal([8L << 20, 12L << 20, 16L << 20], attached.Select(a => Device(a.Index).Size));
            Assert.Equal(["alpha", "beta", "qdisk"], attached.Select(a => Device(a.Index).ExportName));
            foreach (var a in attached)
            {
                var h = WriteRandom(a.Device, 4L << 20);
                Assert.Equal(h, HashDevice(a.Device, 4L << 20));
            }
        }
        finally
        {
            foreach (var a in attached) await DisconnectAndVerifyFreeAsync(a.Index);
        }
    }

    [KernelFact]
    public async Task Read_only_attach_rejects_writes()
    {
        using var server = PeerServer.Nbdkit("memory", "8M");
        var r = await AttachAsync(server.Uri, new AttachOptions { ReadOnly = true });
        try
        {
            Assert.True(r.IsReadOnly);
            Assert.True(Device(r.Index).IsReadOnly);
            var e = Assert.ThrowsAny<Exception>(() =>
            {
                using var fs = new FileStream(r.Device, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0);
                fs.Write(new byte[4096]);
                fs.Flush(true);
            });
            Assert.True(e is IOException or UnauthorizedAccessException, e.ToString());
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }

    [KernelFact]
    public async Task Four_connections_to_a_multi_conn_export()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        var (code, can) = Run("nbdinfo", "--can", "multi-conn", server.Uri.ToString());
        Assert.True(code == 0, $"nbdinfo says the export has no multi-conn: {can}");
        var r = await AttachAsync(server.Uri, new AttachOptions(), connections: 4);
        try
        {
            Assert.Equal(4, r.Connections);
            // One blk-mq queue per socket, capped at the CPU count: sysfs can only show 4 with 4+ CPUs.
            var shown = Device(r.Index).Connections;
            Assert.True(shown is null or 4, $"Connections = {shown}");
            var h = WriteRandom(r.Device, 16L << 20);
            Assert.Equal(h, HashDevice(r.Device, 16L << 20));
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }

    [KernelFact]
    public async Task Discovery_sees_a_device_attached_by_nbd_client()
    {
        using var server = PeerServer.Nbdkit("memory", "32M");
        int index = FreeIndex();
        RunOk("nbd-client", "127.0.0.1", server.Port.ToString(), $"/dev/nbd{index}", "-N", "x");
        try
        {
            var clock = Stopwatch.StartNew();
            while (Device(index).Size == 0 && clock.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(100);
            var d = Device(index);
            Assert.True(d.IsConnected);
            Assert.Equal(32L << 20, d.Size);
            Assert.False(d.IsOwnedByThisProcess);
        }
        finally { await DisconnectAndVerifyFreeAsync(index); }
    }

    [KernelFact]
    public async Task Ext4_mount_refuses_disconnect_unless_forced()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        var r = await AttachAsync(server.Uri, new AttachOptions());
        string mnt = Path.Combine(Path.GetTempPath(), $"nbdps-mnt-{Guid.NewGuid():N}");
        Directory.CreateDirectory(mnt);
        try
        {
            RunOk("mkfs.ext4", "-q", "-F", r.Device);
            RunOk("mount", "-t", "ext4", r.Device, mnt);
            File.WriteAllText(Path.Combine(mnt, "hello.txt"), "hello from nbd");
            Sync();
            var e = await Assert.ThrowsAsync<NbdDeviceMountedException>(() => new KernelAttacher().DisconnectAsync(r.Index));
            Assert.Contains(mnt, e.MountPoints);
            Assert.Contains(mnt, e.Message);
            RunOk("umount", mnt);
            RunOk("fsck.ext4", "-n", "-f", r.Device);

            RunOk("mount", "-t", "ext4", r.Device, mnt);
            Assert.Equal("hello from nbd", File.ReadAllText(Path.Combine(mnt, "hello.txt")));
            await new KernelAttacher().DisconnectAsync(r.Index, force: true, TimeSpan.FromSeconds(30));
            Run("umount", mnt);
            var clock = Stopwatch.StartNew();
            while (Device(r.Index).IsConnected && clock.Elapsed < TimeSpan.FromSeconds(60)) await Task.Delay(200);
            Assert.False(Device(r.Index).IsConnected);
        }
        finally
        {
            Run("umount", "-l", mnt);
            if (Device(r.Index).IsConnected) await new KernelAttacher().DisconnectAsync(r.Index, force: true);
            Directory.Delete(mnt);
        }
    }

    [KernelFact]
    public async Task Killed_server_fails_io_within_the_timeout_and_the_device_is_reusable()
    {
        var server = PeerServer.Nbdkit("memory", "16M");
        var r = await AttachAsync(server.Uri, new AttachOptions { Timeout = TimeSpan.FromSeconds(5) });
        try
        {
            WriteRandom(r.Device, 1L << 20);
            server.Kill();
            var clock = Stopwatch.StartNew();
            var read = Task.Run(() => HashDevice(r.Device, 8L << 20, offset: 4L << 20));
            var finished = await Task.WhenAny(read, Task.Delay(TimeSpan.FromSeconds(90)));
            Assert.True(finished == read, $"a read on a device whose server died did not fail within 90 s");
            var e = await Assert.ThrowsAnyAsync<IOException>(() => read);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(90), $"took {clock.Elapsed}");

            await DisconnectAndVerifyFreeAsync(r.Index);
            using var again = PeerServer.Nbdkit("memory", "16M");
            var r2 = await AttachAsync(again.Uri, new AttachOptions { Index = r.Index });
            Assert.Equal(r.Index, r2.Index);
            var h = WriteRandom(r2.Device, 1L << 20);
            Assert.Equal(h, HashDevice(r2.Device, 1L << 20));
        }
        finally
        {
            server.Dispose();
            if (Device(r.Index).IsConnected) await new KernelAttacher().DisconnectAsync(r.Index, force: true);
        }
    }

    [KernelFact]
    public async Task Unix_socket_negotiated_by_the_caller_attaches_through_the_socket_api()
    {
        // The shape the in-process server uses: the caller connects and negotiates, then hands over raw sockets.
        using var server = PeerServer.NbdkitUnix("memory", "8M");
        var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await socket.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(server.Uri.SocketPath!));
        var c = await NbdClient.NegotiateAsync(socket, server.Uri, Options);
        var r = await new KernelAttacher().AttachAsync([c.DetachSocket()], c.Size, c.Flags,
            new AttachOptions { BackendIdentifier = server.Uri.ToString() });
        try
        {
            var d = Device(r.Index);
            Assert.Equal(8L << 20, d.Size);
            Assert.Equal(server.Uri.SocketPath, d.SocketPath);
            var h = WriteRandom(r.Device, 4L << 20);
            Assert.Equal(h, HashDevice(r.Device, 4L << 20));
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }

    [KernelFact]
    public async Task Busy_and_missing_devices_are_typed()
    {
        using var server = PeerServer.Nbdkit("memory", "4M");
        var r = await AttachAsync(server.Uri, new AttachOptions());
        try
        {
            await Assert.ThrowsAsync<NbdDeviceBusyException>(() => AttachAsync(server.Uri, new AttachOptions { Index = r.Index }));
            await Assert.ThrowsAsync<NbdDeviceNotFoundException>(() => new KernelAttacher().DisconnectAsync(4000));
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index); }
    }
}
