using System.Diagnostics;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>
/// The life cycle around an attachment: detach refuses a mounted device unless forced, a crashed owner (SIGKILL)
/// leaves a state the cleanup removes completely, and the cleanup never touches a live owner's attachment.
/// </summary>
[Collection("Fuse")]
public sealed class FuseCleanupTests : IAsyncLifetime
{
    private readonly TestServer _server = new();

    public Task InitializeAsync()
    {
        _server.Add("disk", new MemoryBlockStore(64L << 20));
        return Task.CompletedTask;
    }

    public Task DisposeAsync() => _server.DisposeAsync().AsTask();

    private NbdUri Disk => NbdUri.ForTcp("127.0.0.1", _server.Port, "disk");

    /// <summary>Attaches the disk in <paramref name="scope"/>, makes ext4 on it and mounts that.</summary>
    private async Task<(FuseAttachment Attachment, string MountPoint)> AttachMountedAsync(FuseTestScope scope)
    {
        var attachment = await scope.Attacher.AttachAsync(Disk, client: Options);
        RunOk("mkfs.ext4", "-q", "-F", attachment.LoopDevice);
        return (attachment, scope.MountExt4(attachment.LoopDevice));
    }
    [FuseFact]
    public async Task Killed_owner_leaves_a_state_the_cleanup_removes_completely()
    {
        await using var scope = new FuseTestScope();
        using var host = FuseAttachHost.Start(Disk, scope.RuntimeDirectory);

        // The child serves the device: our data goes through it.
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        FuseTestScope.WriteDevice(host.LoopDevice, 0, data);
        Assert.Equal(data, FuseTestScope.ReadDevice(host.LoopDevice, 0, data.Length));

        host.Kill();
        // What a crash leaves: the FUSE mount (its server gone) and the loop device bound to its file.
        Assert.Contains(FuseMount.List(), m => m.MountPoint == host.MountPoint);
        Assert.Contains(LoopDevice.List(), l => l.Device == host.LoopDevice && l.BackingFile.StartsWith(scope.RuntimeDirectory, StringComparison.Ordinal));
        Assert.NotEmpty(scope.Leftovers());

        var report = await new FuseAttacher(scope.RuntimeDirectory).CleanUpAsync();
        var entry = Assert.Single(report.Cleaned);
        Assert.Equal(host.Id, entry.Id);
        Assert.True(entry.IsComplete, string.Join("; ", entry.Actions));
        Assert.Equal([host.LoopDevice], entry.LoopDevices);
        Assert.Contains(entry.Actions, a => a.StartsWith("detached " + host.LoopDevice, StringComparison.Ordinal));
        Assert.Contains(entry.Actions, a => a.StartsWith("unmounted " + host.MountPoint, StringComparison.Ordinal));
        Assert.Empty(report.Skipped);

        Assert.Empty(scope.Leftovers()); // nothing in /proc/self/mountinfo or losetup -a
        string losetup = Run("losetup", "-a").Output;
        Assert.False(losetup.Contains(host.MountPoint, StringComparison.Ordinal), $"losetup -a still lists {host.MountPoint}:\n{losetup}");
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(scope.RuntimeDirectory, "fuse")));
        Assert.Empty((await new FuseAttacher(scope.RuntimeDirectory).CleanUpAsync()).Cleaned);
    }

    [FuseFact]
    public async Task Cleanup_leaves_a_live_owners_attachment_alone()
    {
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(Disk, client: Options);

        // Another attacher on the same directory (a second service instance, or a cleanup run at start) sees an owner that runs.
        var report = await new FuseAttacher(scope.RuntimeDirectory).CleanUpAsync(force: true);
        Assert.Empty(report.Cleaned);
        var skipped = Assert.Single(report.Skipped);
        Assert.Equal(attachment.Id, skipped.Id);
        Assert.Contains($"process {Environment.ProcessId}", skipped.Actions[0]);
        // The owner's own cleanup knows it serves it.
        Assert.Equal("served by this process", Assert.Single((await scope.Attacher.CleanUpAsync()).Skipped).Actions[0]);

        Assert.True(attachment.IsServing);
        var data = RandomNumberGenerator.GetBytes(64 << 10);
        FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
        Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length));
        var record = Assert.Single(new FuseAttacher(scope.RuntimeDirectory).ReadRecords());
        Assert.Equal(attachment.LoopIndex, record.LoopIndex);
        Assert.Equal(attachment.Record.Uri, record.Uri);
        await attachment.DetachAsync();
    }

    [FuseFact]
    public async Task Detach_refuses_a_mounted_device_until_it_is_unmounted()
    {
        await using var scope = new FuseTestScope();
        var (attachment, mnt) = await AttachMountedAsync(scope);
        File.WriteAllText(Path.Combine(mnt, "hello.txt"), "still here");

        var refused = await Assert.ThrowsAsync<NbdDeviceMountedException>(() => attachment.DetachAsync());
        Assert.Contains(mnt, refused.MountPoints);
        Assert.True(attachment.IsServing);
        Assert.Equal("still here", File.ReadAllText(Path.Combine(mnt, "hello.txt")));

        scope.Unmount(mnt);
        await attachment.DetachAsync();
        Assert.False(attachment.IsServing);
        Assert.Empty(scope.Leftovers());
        Assert.Empty(scope.Attacher.Attachments);
    }

    [FuseFact]
    public async Task Forced_detach_of_a_mounted_device_frees_everything_once_it_is_unmounted()
    {
        await using var scope = new FuseTestScope();
        var (attachment, mnt) = await AttachMountedAsync(scope);

        await attachment.DetachAsync(force: true, timeout: TimeSpan.FromSeconds(2));
        Assert.False(attachment.IsServing);
        Assert.DoesNotContain(FuseMount.List(), m => m.MountPoint == attachment.MountPoint);
        // The loop device lives on (set to clear itself) while ext4 holds it; its I/O now fails.
        Assert.True(LoopDevice.Get(attachment.LoopIndex)?.AutoClear);

        scope.Unmount(mnt); // ext4 may log the failed writes; the unmount itself succeeds and releases the device
        Assert.True(await LoopDevice.WaitUntilFreeAsync(attachment.LoopIndex, TimeSpan.FromSeconds(10), CancellationToken.None));
        Assert.Empty(scope.Leftovers());
    }

    /// <summary>The bench host's fuse-attach in a child process, so a test can SIGKILL the owner of an attachment.</summary>
    private sealed class FuseAttachHost : IDisposable
    {
        private readonly Process _process;

        private FuseAttachHost(Process process, string[] ready)
        {
            _process = process;
            LoopDevice = ready[1];
            Id = ready[2];
            MountPoint = ready[3];
        }

        public string LoopDevice { get; }
        public string Id { get; }
        public string MountPoint { get; }

        public static FuseAttachHost Start(NbdUri uri, string runtimeDirectory)
        {
            var (process, ready) = BenchHost.Launch("fuse-attach", "--uri", uri.ToString(), "--runtime-dir", runtimeDirectory);
            return new FuseAttachHost(process, ready.Split(' '));
        }

        /// <summary>SIGKILL: the owner gets no chance to detach, unmount or close anything.</summary>
        public void Kill()
        {
            _process.Kill();
            Assert.True(_process.WaitForExit(10_000), "the killed attach host did not exit");
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                try { _process.Kill(); } catch (InvalidOperationException) { }
                _process.WaitForExit(10_000);
            }
            _process.Dispose();
        }
    }
}
