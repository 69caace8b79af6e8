using NbdPowerShell.Engine.Kernel;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>Discovery against a fake /sys tree and mountinfo in a temp dir: no kernel needed.</summary>
public sealed class NbdDeviceDiscoveryTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"nbdps-sys-{Guid.NewGuid():N}");
    private string Sys => Path.Combine(_root, "sys");
    private string MountInfo => Path.Combine(_root, "mountinfo");

    private sealed class FakeStatus(IReadOnlyDictionary<int, bool>? status) : INbdStatusProvider
    {
        public IReadOnlyDictionary<int, bool>? GetStatus() => status;
    }

    public NbdDeviceDiscoveryTests()
    {
        // nbd0: netlink device from us, with a partition mounted and a dm holder, 2 connections.
        Device(0, size: 131072, ro: 0, bs: 4096, pid: 4242, backend: "nbd://[::1]:10810/my%20disk", mq: 2);
        Write("block/nbd0/holders/dm-3", "");
        Write("block/nbd0/nbd0p1/dev", "43:1\n");
        Write("block/nbd0/nbd0p1/holders/.keep", "");
        File.Delete(Path.Combine(Sys, "block/nbd0/nbd0p1/holders/.keep"));
        Write("kernel/debug/nbd/nbd0/timeout", "30\n");
        // nbd1: attached by nbd-client 3.24 (netlink, empty backend line).
        Device(1, size: 2048, ro: 1, bs: 512, pid: 777, backend: "", mq: 1);
        // nbd2: ioctl device (qemu-nbd -c): pid, no backend file.
        Device(2, size: 8, ro: 0, bs: 1024, pid: 999, backend: null, mq: 1);
        // nbd3: free.
        Device(3, size: 0, ro: 0, bs: 1024, pid: null, backend: null, mq: 1);
        // Unix-socket backend on nbd4, which netlink says is connected although its caller has exited.
        Device(4, size: 64, ro: 0, bs: 4096, pid: null, backend: "nbd+unix:///e?socket=/run/x.sock", mq: 1);
        Write("block/loop0/size", "0\n");
        Write("devices/system/cpu/possible", "0-3\n");
        // nbd5: 4 queues on a 4-CPU machine: maybe more sockets, so unknown.
        Device(5, size: 64, ro: 0, bs: 4096, pid: 1, backend: "", mq: 4);
        File.WriteAllText(MountInfo,
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" +
            "80 22 43:1 / /mnt/with\\040space rw,relatime shared:40 - ext4 /dev/nbd0p1 rw\n" +
            "81 22 43:64 / /srv/ro ro,relatime - ext4 /dev/nbd2 ro\n");
    }

    private void Write(string relative, string content)
    {
        string path = Path.Combine(Sys, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, content);
    }

    private void Device(int index, long size, int ro, int bs, int? pid, string? backend, int mq)
    {
        string d = $"block/nbd{index}";
        Write($"{d}/size", $"{size}\n");
        Write($"{d}/ro", $"{ro}\n");
        Write($"{d}/dev", $"43:{index * 32}\n");
        Write($"{d}/queue/logical_block_size", $"{bs}\n");
        Directory.CreateDirectory(Path.Combine(Sys, d, "holders"));
        for (int q = 0; q < mq; q++) Directory.CreateDirectory(Path.Combine(Sys, d, "mq", q.ToString()));
        if (pid is int p) Write($"{d}/pid", $"{p}\n");
        if (backend is not null) Write($"{d}/backend", backend + "\n");
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private NbdDeviceDiscovery Discovery(IReadOnlyDictionary<int, bool>? status) =>
        new(sysRoot: Sys, procMountInfo: MountInfo, statusProvider: new FakeStatus(status));

    [Fact]
    public void Lists_only_nbd_devices_in_index_order()
    {
        var devices = Discovery(null).GetDevices();
        Assert.Equal([0, 1, 2, 3, 4, 5], devices.Select(d => d.Index));
        Assert.Equal("/dev/nbd2", devices[2].Device);
    }

    [Fact]
    public void Netlink_device_with_uri_mounts_holders_and_connections()
    {
        var d = Discovery(new Dictionary<int, bool> { [0] = true }).GetDevice(0)!;
        Assert.True(d.IsConnected);
        Assert.Equal(AttachMode.Netlink, d.Mode);
        Assert.Equal(131072L * 512, d.Size);
        Assert.Equal(4096, d.BlockSize);
        Assert.False(d.IsReadOnly);
        Assert.Equal("nbd://[::1]:10810/my%20disk", d.BackendIdentifier);
        Assert.Equal("::1", d.Host);
        Assert.Equal(10810, d.Port);
        Assert.Equal("my disk", d.ExportName);
        Assert.Equal(2, d.Connections);
        Assert.Equal(30, d.TimeoutSeconds);
        Assert.Equal(["/mnt/with space"], d.MountPoints);
        Assert.Equal(["dm-3"], d.Holders);
        Assert.Equal(["nbd0p1"], d.Partitions);
        Assert.Equal(4242, d.Pid);
        Assert.True(d.IsInUse);
    }

    [Fact]
    public void Nbd_client_device_with_empty_backend_is_connected_without_uri()
    {
        var d = Discovery(new Dictionary<int, bool> { [1] = true }).GetDevice(1)!;
        Assert.True(d.IsConnected);
        Assert.Equal(AttachMode.Netlink, d.Mode);
        Assert.Null(d.BackendIdentifier);
        Assert.Null(d.Uri);
        Assert.True(d.IsReadOnly);
        Assert.Equal(2048L * 512, d.Size);
        Assert.Null(d.TimeoutSeconds);
    }

    [Fact]
    public void Ioctl_device_falls_back_to_the_pid_file_and_matches_whole_disk_mounts()
    {
        var d = Discovery(null).GetDevice(2)!;
        Assert.True(d.IsConnected);
        Assert.Equal(AttachMode.Ioctl, d.Mode);
        Assert.Equal(999, d.Pid);
        Assert.Equal(["/srv/ro"], d.MountPoints);
        Assert.Equal(1024, d.BlockSize);
    }

    [Fact]
    public void Free_device_reports_not_connected_and_no_mode()
    {
        var d = Discovery(new Dictionary<int, bool> { [3] = false }).GetDevice(3)!;
        Assert.False(d.IsConnected);
        Assert.Null(d.Mode);
        Assert.Equal(0, d.Size);
        Assert.Null(d.Connections);
        Assert.Empty(d.MountPoints);
        Assert.False(d.IsInUse);
    }

    [Fact]
    public void Netlink_status_wins_over_a_missing_pid_and_unix_uris_parse()
    {
        var d = Discovery(new Dictionary<int, bool> { [4] = true }).GetDevice(4)!;
        Assert.True(d.IsConnected);
        Assert.Equal("/run/x.sock", d.SocketPath);
        Assert.Equal("e", d.ExportName);
        Assert.Null(d.Host);
        Assert.False(Discovery(null).GetDevice(4)!.IsConnected); // without netlink nothing proves liveness
    }

    [Fact]
    public void Queue_count_at_the_cpu_cap_is_not_reported_as_connections() =>
        Assert.Null(Discovery(new Dictionary<int, bool> { [5] = true }).GetDevice(5)!.Connections);

    [Fact]
    public void Missing_device_is_null() => Assert.Null(Discovery(null).GetDevice(9));

    [Fact]
    public void Mountinfo_octal_escapes_are_decoded()
    {
        var table = MountTable.Parse("1 0 43:0 / /a\\011b\\134c\\040d rw - ext4 /dev/nbd0 rw\nbad line\n");
        var e = Assert.Single(table.Entries);
        Assert.Equal("/a\tb\\c d", e.MountPoint);
        Assert.Equal("/dev/nbd0", e.Source);
    }
}
