using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>
/// Exports attached as /dev/loopN through our FUSE server on the host: our own server, nbdkit and qemu-nbd under
/// ext4; read-only exports; statistics; TLS; multi-conn rules.
/// </summary>
[Collection("Fuse")]
public sealed class FuseAttachTests
{
    private const long Size = 256L << 20;

    [FuseFact]
    public async Task Our_export_carries_ext4_through_detach_and_reattach()
    {
        await using var server = new TestServer();
        server.Add("disk", new MemoryBlockStore(Size));
        await Ext4RoundTrip(NbdUri.ForTcp("127.0.0.1", server.Port, "disk"));
        Assert.True(server.Server.GetExport("disk")!.Io.BytesWritten >= 64L << 20, "the data must have reached our server");
    }

    [FuseFact]
    public async Task Nbdkit_memory_carries_ext4_through_detach_and_reattach()
    {
        using var nbdkit = PeerServer.Nbdkit("memory", "256M");
        await Ext4RoundTrip(nbdkit.Uri);
    }

    [FuseFact]
    public async Task Qemu_nbd_carries_ext4_through_detach_and_reattach()
    {
        using var qemu = PeerServer.QemuNbd("disk", Size, shared: 4);
        await Ext4RoundTrip(qemu.Uri);
    }

    /// <summary>mkfs, mount, 64 MiB of random data, sync, umount, detach, attach again: same hash, fsck clean.</summary>
    private static async Task Ext4RoundTrip(NbdUri uri)
    {
        await using var scope = new FuseTestScope();
        var data = RandomNumberGenerator.GetBytes(64 << 20);
        var attachment = await scope.Attacher.AttachAsync(uri, client: Options);
        string device = attachment.LoopDevice;
        Assert.True(attachment.DirectIo, "the loop driver should run in direct-I/O mode on our FUSE file");
        Assert.Equal(Size, attachment.Device!.Size);
        RunOk("mkfs.ext4", "-q", "-F", device);
        string mnt = scope.MountExt4(device);
        File.WriteAllBytes(Path.Combine(mnt, "data.bin"), data);
        Sync();
        Assert.Contains(mnt, attachment.Device!.MountPoints);
        scope.Unmount(mnt);
        var stats = attachment.Statistics;
        await attachment.DetachAsync();
        Assert.Null(LoopDevice.Get(attachment.LoopIndex) is { } l && l.BackingFile == attachment.BackingFile ? l : null);
        Assert.DoesNotContain(FuseMount.List(), m => m.MountPoint == attachment.MountPoint);
        Assert.Empty(scope.Attacher.ReadRecords());
        Assert.True(stats.BytesWritten >= 64L << 20, $"only {stats.BytesWritten} bytes went through FUSE");
        Assert.Equal(0, stats.Errors);
        Assert.True(stats.Flushes > 0, "sync must reach the server as FLUSH");

        var again = await scope.Attacher.AttachAsync(uri, client: Options);
        RunOk("fsck.ext4", "-n", "-f", again.LoopDevice);
        mnt = scope.MountExt4(again.LoopDevice, readOnly: true);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(File.ReadAllBytes(Path.Combine(mnt, "data.bin"))));
        scope.Unmount(mnt);
        await again.DetachAsync();
    }

    [FuseFact]
    public async Task Read_only_export_gives_a_read_only_loop_device_that_refuses_writes()
    {
        await using var server = new TestServer();
        var store = server.Add("ro", new MemoryBlockStore(16L << 20), readOnly: true);
        var pattern = RandomNumberGenerator.GetBytes(1 << 20);
        store.Write(0, pattern, fua: false);
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "ro"), client: Options);
        Assert.True(attachment.IsReadOnly);
        Assert.True(attachment.Device!.IsReadOnly, "the loop device must be read-only");
        Assert.Equal("1", File.ReadAllText($"/sys/block/loop{attachment.LoopIndex}/ro").Trim());
        Assert.Equal(pattern, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, pattern.Length));

        var (code, output) = Run("dd", "if=/dev/zero", $"of={attachment.LoopDevice}", "bs=4096", "count=1", "oflag=direct", "conv=notrunc");
        Assert.True(code != 0, $"writing to the read-only device succeeded: {output}");
        var refused = Assert.ThrowsAny<IOException>(() => File.OpenHandle(attachment.BackingFile, FileMode.Open, FileAccess.ReadWrite).Dispose());
        Assert.Contains("Read-only file system", refused.Message); // EROFS from the read-only FUSE mount
        Assert.Equal(pattern, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, pattern.Length));
        Assert.Equal(0, server.Server.GetExport("ro")!.Io.BytesWritten);
        await attachment.DetachAsync();
    }

    [FuseFact]
    public async Task ReadOnly_option_makes_a_writable_export_read_only()
    {
        using var nbdkit = PeerServer.Nbdkit("memory", "16M");
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, new FuseAttachOptions { ReadOnly = true }, Options);
        Assert.True(attachment.Device!.IsReadOnly);
        Assert.NotEqual(0, Run("dd", "if=/dev/zero", $"of={attachment.LoopDevice}", "bs=4096", "count=1", "oflag=direct", "conv=notrunc").Code);
        await attachment.DetachAsync();
    }

    [FuseFact]
    public async Task Statistics_count_what_the_kernel_asked()
    {
        using var nbdkit = PeerServer.Nbdkit("memory", "64M");
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, client: Options);
        Assert.Equal(FuseAttachOptions.DefaultMultiConnections, attachment.Connections); // nbdkit memory allows multi-conn
        var data = RandomNumberGenerator.GetBytes(8 << 20);
        var before = attachment.Statistics;
        FuseTestScope.WriteDevice(attachment.LoopDevice, 4 << 20, data);
        Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 4 << 20, data.Length));
        var after = attachment.Statistics;
        Assert.Equal(data.Length, after.BytesWritten - before.BytesWritten);
        Assert.True(after.BytesRead - before.BytesRead >= data.Length);
        Assert.True(after.Writes > before.Writes && after.Reads > before.Reads && after.Flushes > before.Flushes);
        Assert.Equal(0, after.Errors);
        Assert.Equal(0, after.InFlight);
        // What nbdkit holds is what went in.
        var back = new byte[data.Length];
        await using (var c = await NbdClient.ConnectAsync(nbdkit.Uri, Options))
            await c.ReadAsync(4 << 20, back);
        Assert.Equal(data, back);
        await attachment.DetachAsync();
    }

    /// <summary>The server goes away and comes back (a restart): the next requests reconnect and the disk carries on.</summary>
    [FuseFact]
    public async Task Reconnects_when_the_server_restarts()
    {
        await using var scope = new FuseTestScope();
        string image = Path.Combine(scope.Directory, "disk.img");
        using (var f = File.Create(image)) f.SetLength(16L << 20);
        string sock = Path.Combine(scope.Directory, "nbd.sock");
        var nbdkit = PeerServer.NbdkitUnixAt(sock, "file", image);
        FuseAttachment attachment;
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        try
        {
            attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, new FuseAttachOptions { Connections = 2 }, Options);
            FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
        }
        finally { nbdkit.Dispose(); }

        using var restarted = PeerServer.NbdkitUnixAt(sock, "file", image);
        Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length));
        FuseTestScope.WriteDevice(attachment.LoopDevice, 4 << 20, data);
        Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 4 << 20, data.Length));
        var stats = attachment.Statistics;
        Assert.True(stats.Reconnects >= 1, "the pool must have reopened a connection");
        Assert.Equal(0, stats.Errors);
        await attachment.DetachAsync();
        Assert.Equal(data, File.ReadAllBytes(image).AsSpan(4 << 20, data.Length).ToArray());
    }

    [FuseFact]
    public async Task Tls_export_attaches_over_nbds()
    {
        string dir = Directory.CreateTempSubdirectory("nbdps-fuse-tls-").FullName;
        using var certs = new TestCertificates(dir);
        try
        {
            await using var server = new TestServer(new NbdServerOptions { Tls = new TlsOptions(certs.Server, TlsMode.Require) });
            server.Add("secure", new MemoryBlockStore(16L << 20));
            await using var scope = new FuseTestScope();
            var client = Options with { Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(certs.Authority) } };
            var attachment = await scope.Attacher.AttachAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "secure"), client: client);
            Assert.StartsWith("nbds://", attachment.Record.Uri);
            var data = RandomNumberGenerator.GetBytes(2 << 20);
            FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
            Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length));
            Assert.True(server.Server.GetExport("secure")!.Io.BytesWritten >= data.Length);
            await attachment.DetachAsync();
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [FuseFact]
    public async Task Several_connections_need_multi_conn()
    {
        using var nbdkit = PeerServer.Nbdkit("--filter=multi-conn", "memory", "16M", "multi-conn-mode=disable");
        await using var scope = new FuseTestScope();
        await Assert.ThrowsAsync<NbdMultiConnNotSupportedException>(() => scope.Attacher.AttachAsync(nbdkit.Uri, new FuseAttachOptions { Connections = 2 }, Options));
        Assert.Empty(scope.Leftovers());
        Assert.Empty(Directory.Exists(scope.Attacher.Directory) ? Directory.EnumerateFileSystemEntries(scope.Attacher.Directory) : []);
        var attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, client: Options);
        Assert.Equal(1, attachment.Connections);
        await attachment.DetachAsync();
    }

    [FuseFact]
    public async Task A_failed_connect_leaves_nothing_behind()
    {
        await using var scope = new FuseTestScope();
        await Assert.ThrowsAsync<NbdConnectionRefusedException>(() => scope.Attacher.AttachAsync(NbdUri.ForTcp("127.0.0.1", PeerServer.FreePort(), "x"), client: Options));
        await using var server = new TestServer();
        server.Add("empty", new MemoryBlockStore(0));
        await Assert.ThrowsAsync<NbdFuseException>(() => scope.Attacher.AttachAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "empty"), client: Options));
        Assert.Empty(scope.Leftovers());
        Assert.Empty(scope.Attacher.Attachments);
    }
}
