using System.Globalization;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Kernel.Supervision;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// Supervised devices under the real nbd driver: servers are killed (SIGKILL) and started again on the same port, or
/// replaced by another server, while dd reads; every test checks the data by hash and counts I/O errors (dd's and the
/// kernel log's). Most of their time is waiting (servers restarting, request and dead-connection timeouts), so
/// tools/test.sh runs them in a second VM boot beside the other kernel tests (the KernelLane trait).
/// </summary>
[Trait("Category", "Kernel")]
[Trait("KernelLane", "2")]
[Collection("Kernel")]
public sealed class SupervisorKernelTests : IDisposable
{
    private static readonly bool InVm = Environment.GetEnvironmentVariable("NBD_VM") == "1";
    /// <summary>Bound for anything that waits on .NET inside the emulated VM (20-30x slower than the host).</summary>
    private static readonly TimeSpan Slow = TimeSpan.FromSeconds(InVm ? 600 : 120);
    private const long ImageSize = 256L << 20;
    /// <summary>
    /// The kernel's request timeout for the supervised devices. It is also how long requests in flight when a server dies
    /// wait before they are sent again, so it bounds the stall from below. Inside the emulated VM on a busy host a
    /// healthy server can take seconds to answer, and a timeout there would replace a live connection (an extra
    /// reconnect the assertions rightly count), so the VM gets more room: with five emulated VMs on two host cores a
    /// healthy server took longer than 15 s for one 1 MiB read (a second, spurious loss in the engine restart test).
    /// </summary>
    private static readonly int RequestTimeout = InVm ? 60 : 5;

    private readonly ITestOutputHelper _output;
    private readonly TestOutputLogger _log;
    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-supervise-").FullName;

    public SupervisorKernelTests(ITestOutputHelper output)
    {
        _output = output;
        _log = new TestOutputLogger(output);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static DeviceSupervisorOptions Options => new() { ConnectTimeout = KernelTestTools.ClientTimeout };

    /// <summary>Long enough for the slowest restart here (our engine starting under emulation), so loss never turns into EIO.</summary>
    private static int DeadTimeout => InVm ? 300 : 60;

    private (string Path, byte[] Hash) RandomImage(string name, long size)
    {
        string path = Path.Combine(_dir, name);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using (var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            var buffer = new byte[1 << 20];
            for (long done = 0; done < size; done += buffer.Length)
            {
                RandomNumberGenerator.Fill(buffer);
                f.Write(buffer);
                sha.AppendData(buffer);
            }
        }
        return (path, sha.GetHashAndReset());
    }

    /// <summary>Attaches <paramref name="servers"/> under supervision with this class's timeouts.</summary>
    private Task<DeviceSupervisor> Supervise(IEnumerable<Engine.Client.NbdUri> servers, bool readOnly = true, int? deadTimeout = null,
        SupervisionTlsFiles? tls = null, DeviceSupervisorOptions? options = null) =>
        DeviceSupervisor.AttachAsync(new SupervisedAttachRequest
        {
            Servers = servers.Select(u => u.ToString()).ToArray(),
            ReadOnly = readOnly,
            RequestTimeoutSeconds = RequestTimeout,
            DeadConnectionTimeoutSeconds = deadTimeout ?? DeadTimeout,
            Tls = tls,
        }, _log, options ?? Options);

    /// <summary>
    /// dd reads the device twice over while <paramref name="disrupt"/> runs a quarter into the first pass. Both passes
    /// must read the whole image with <paramref name="hash"/>, dd must see no error and the kernel log none.
    /// </summary>
    private async Task ReadThroughAsync(string device, long size, byte[] hash, Func<Task> disrupt)
    {
        int kernelErrors = DdReadLoop.KernelIoErrors(device);
        await using var dd = DdReadLoop.Start(device, size, maxPasses: 2);
        await dd.WaitUntilAsync(l => l.BytesInCurrentPass >= size / 4, Slow, "a quarter of the first pass");
        await disrupt();
        await dd.WaitUntilAsync(l => l.IsFinished, Slow, "both passes");
        foreach (var p in dd.Passes) _output.WriteLine(dd.Describe(p));
        Assert.Equal(2, dd.Passes.Count);
        Assert.All(dd.Passes, p => Assert.False(p.Failed(size), dd.Describe(p)));
        Assert.All(dd.Passes, p => Assert.Equal(hash, p.Hash));
        Assert.Equal(0, DdReadLoop.KernelIoErrors(device) - kernelErrors);
    }

    /// <summary>SIGKILL the server, wait 3 s, start it again on the same port.</summary>
    private static async Task KillAndRestartAsync(Action kill, Action restart)
    {
        kill();
        await Task.Delay(TimeSpan.FromSeconds(3));
        await Task.Run(restart);
    }

    [KernelFact]
    public Task Read_only_device_survives_a_restart_of_our_engine() => ReadOnlyRestart(ServerKind.Engine);

    [KernelFact]
    public Task Read_only_device_survives_a_restart_of_nbdkit() => ReadOnlyRestart(ServerKind.Nbdkit);

    [KernelFact]
    public Task Read_only_device_survives_a_restart_of_nbd_server() => ReadOnlyRestart(ServerKind.NbdServer);

    /// <summary>
    /// dd reads the whole 256 MiB image in a loop; mid-read the server is killed and started again on the same port
    /// 3 s later. Every pass has the image's hash, no read failed, the kernel logged no I/O error, one reconnect.
    /// $NBDPS_RESTART_CYCLES (default 1) repeats the kill and restart on the same device, for bench/reliability.sh
    /// to take medians; the reconnect count must then equal the number of cycles.
    /// </summary>
    private async Task ReadOnlyRestart(ServerKind kind)
    {
        int cycles = int.TryParse(Environment.GetEnvironmentVariable("NBDPS_RESTART_CYCLES"), out int c) && c > 0 ? c : 1;
        var (image, hash) = RandomImage("ro.img", ImageSize);
        using var server = RestartableServer.Serve(kind, image, "ro", readOnly: true);
        await using var supervisor = await Supervise([server.Uri]);
        var device = supervisor.Attachment!.Device;
        int kernelErrors = DdReadLoop.KernelIoErrors(device);
        try
        {
            Assert.True(supervisor.Attachment.IsReadOnly);
            Assert.NotNull(supervisor.Record.ContentFingerprint);
            await using var dd = DdReadLoop.Start(device, ImageSize);
            var restarts = new List<(DateTime Killed, DateTime Started, DateTime Accepting)>();
            for (int cycle = 0; cycle < cycles; cycle++)
            {
                // A quarter of an image read since the last restart, so the server always dies mid-read.
                long mark = dd.TotalBytes;
                await dd.WaitUntilAsync(l => l.TotalBytes >= mark + ImageSize / 4, Slow, "a quarter of an image read");
                var killed = DateTime.UtcNow;
                server.Kill();
                await Task.Delay(TimeSpan.FromSeconds(3));
                var (started, accepting) = await Task.Run(server.Restart);
                restarts.Add((killed, started, accepting));
                await dd.WaitUntilAsync(l => l.FirstChunkAfter(accepting) is not null, Slow, "the first read after the restart");
            }
            // Finish the pass the last restart happened in: it read the image before the loss and after the reconnect.
            var results = await dd.StopAfterCurrentPassAsync(Slow);
            // The figures first, so that a run that fails an assertion below still reports them.
            foreach (var restart in restarts) Report($"read-only restart, {kind}", restart, dd);

            foreach (var p in results) _output.WriteLine(dd.Describe(p));
            Assert.All(results, p => Assert.False(p.Failed(ImageSize), dd.Describe(p)));
            Assert.All(results, p => Assert.Equal(hash, p.Hash));
            Assert.Equal(0, DdReadLoop.KernelIoErrors(device) - kernelErrors);

            var snapshot = supervisor.Snapshot();
            Assert.Equal(SupervisionState.Connected, snapshot.State);
            Assert.Equal(cycles, snapshot.ReconnectCount);
            Assert.Equal(0, snapshot.FailoverCount);
            Assert.Equal(server.Uri.ToString(), snapshot.Server);
            Assert.NotNull(snapshot.LastLossTime);
            Assert.Equal(cycles, snapshot.History.Count(e => e.Kind == SupervisionEventKind.ConnectionLost));
            Assert.Equal(cycles, snapshot.History.Count(e => e.Kind == SupervisionEventKind.Reconnected));
        }
        catch
        {
            DumpKernelLog();
            throw;
        }
        finally
        {
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
        }
    }

    /// <summary>
    /// Three servers: A (nbdkit) and B (our engine) serve identical copies of one image, C (nbd-server) another image of
    /// the same size. A is killed mid-read and never comes back: C is refused for its content, B takes over, and the
    /// reads go on with no error and the right data.
    /// </summary>
    [KernelFact]
    public async Task Read_only_device_fails_over_to_an_identical_image_and_refuses_a_different_one()
    {
        const long size = 64L << 20;
        var (imageA, hash) = RandomImage("a.img", size);
        string imageB = Path.Combine(_dir, "b.img");
        File.Copy(imageA, imageB);
        var (imageC, _) = RandomImage("c.img", size);
        using var a = RestartableServer.Serve(ServerKind.Nbdkit, imageA, "img", readOnly: true);
        using var c = RestartableServer.Serve(ServerKind.NbdServer, imageC, "img", readOnly: true);
        using var b = RestartableServer.Serve(ServerKind.Engine, imageB, "img", readOnly: true);
        await using var supervisor = await Supervise([a.Uri, c.Uri, b.Uri]);
        try
        {
            Assert.Equal(a.Uri.ToString(), supervisor.Snapshot().Server);
            await ReadThroughAsync(supervisor.Attachment!.Device, size, hash, () =>
            {
                a.Kill();
                return Task.CompletedTask;
            });

            var snapshot = supervisor.Snapshot();
            Assert.Equal(SupervisionState.Connected, snapshot.State);
            Assert.Equal(b.Uri.ToString(), snapshot.Server);
            Assert.Equal(1, snapshot.ReconnectCount);
            Assert.Equal(1, snapshot.FailoverCount);
            var refused = Assert.Single(snapshot.History, e => e.Kind == SupervisionEventKind.ServerRefused);
            Assert.Equal(c.Uri.ToString(), refused.Server);
            Assert.Contains("content", refused.Message);
            Assert.Contains(snapshot.History, e => e.Kind == SupervisionEventKind.FailedOver && e.Server == b.Uri.ToString());
        }
        finally
        {
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
        }
    }

    /// <summary>
    /// A writable ext4 on our engine's file backend: a file written and fsynced, the server killed, a second file
    /// written and fsynced while it is down (the kernel holds the I/O), the server started again: both files are
    /// intact, fsck finds nothing, no I/O error.
    /// </summary>
    [KernelFact]
    public async Task Writable_ext4_device_keeps_every_write_across_a_server_restart()
    {
        string image = Path.Combine(_dir, "rw.img");
        using (var f = File.Create(image)) f.SetLength(ImageSize);
        using var server = RestartableServer.Serve(ServerKind.Engine, image, "rw", readOnly: false);
        await using var supervisor = await Supervise([server.Uri], readOnly: false);
        var device = supervisor.Attachment!.Device;
        Assert.False(supervisor.Attachment.IsReadOnly);
        Assert.Null(supervisor.Record.ContentFingerprint);
        string mnt = Directory.CreateDirectory(Path.Combine(_dir, "mnt")).FullName;
        var first = RandomNumberGenerator.GetBytes(16 << 20);
        var second = RandomNumberGenerator.GetBytes(16 << 20);
        int kernelErrors = DdReadLoop.KernelIoErrors(device);
        try
        {
            RunOk("mkfs.ext4", "-q", "-F", device);
            RunOk("mount", "-t", "ext4", device, mnt);
            WriteDurably(Path.Combine(mnt, "first.bin"), first);

            server.Kill();
            var writing = Task.Run(() => WriteDurably(Path.Combine(mnt, "second.bin"), second));
            await Task.Delay(TimeSpan.FromSeconds(3));
            Assert.False(writing.IsCompleted, "the fsync of the second file finished while the server was down");
            await Task.Run(server.Restart);
            await writing.WaitAsync(Slow);

            Sync();
            RunOk("umount", mnt);
            RunOk("fsck.ext4", "-n", "-f", device);
            RunOk("mount", "-t", "ext4", "-o", "ro", device, mnt);
            DropCaches();
            Assert.Equal(SHA256.HashData(first), SHA256.HashData(File.ReadAllBytes(Path.Combine(mnt, "first.bin"))));
            Assert.Equal(SHA256.HashData(second), SHA256.HashData(File.ReadAllBytes(Path.Combine(mnt, "second.bin"))));
            RunOk("umount", mnt);
            Assert.Equal(0, DdReadLoop.KernelIoErrors(device) - kernelErrors);

            var snapshot = supervisor.Snapshot();
            Assert.Equal(SupervisionState.Connected, snapshot.State);
            Assert.Equal(1, snapshot.ReconnectCount);
        }
        finally
        {
            Run("umount", mnt);
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
        }
    }

    private static void WriteDurably(string path, byte[] data)
    {
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        f.Write(data);
        f.Flush(flushToDisk: true);
    }

    /// <summary>
    /// The server comes back with a bigger image: it is refused and the device never reconfigured; after the
    /// dead-connection timeout reads fail with EIO and the state is Dead, but the supervisor keeps trying, and once the
    /// right image is served again the device works again.
    /// </summary>
    [KernelFact]
    public async Task A_server_back_with_another_size_is_refused_and_the_device_goes_dead_then_recovers()
    {
        const long size = 16L << 20;
        int deadTimeout = InVm ? 20 : 8;
        var (image, hash) = RandomImage("size.img", size);
        using var server = RestartableServer.Serve(ServerKind.Nbdkit, image, "img", readOnly: true);
        await using var supervisor = await Supervise([server.Uri], deadTimeout: deadTimeout, options: Options with { DeadBackoff = TimeSpan.FromSeconds(1) });
        var device = supervisor.Attachment!.Device;
        int kernelErrors = DdReadLoop.KernelIoErrors(device);
        try
        {
            server.Kill();
            using (var f = new FileStream(image, FileMode.Open, FileAccess.Write)) f.SetLength(size + (1 << 20));
            await Task.Run(server.Restart);
            await WaitForAsync(() => supervisor.Snapshot().History.Any(e => e.Kind == SupervisionEventKind.ServerRefused), "the refusal");
            var refused = supervisor.Snapshot().History.First(e => e.Kind == SupervisionEventKind.ServerRefused);
            Assert.Contains("bytes", refused.Message);

            // A read now waits for a connection the kernel will never get, then fails.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var (code, output) = Run("dd", $"if={device}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct");
            _output.WriteLine($"dd during the outage: exit {code} after {clock.Elapsed.TotalSeconds:0.0} s: {output.Trim()}");
            Assert.NotEqual(0, code);
            Assert.Contains("Input/output error", output);
            Assert.True(DdReadLoop.KernelIoErrors(device) > kernelErrors, "the kernel logged no I/O error for the failed read");
            await WaitForAsync(() => supervisor.Snapshot().State == SupervisionState.Dead, "state Dead");
            var dead = supervisor.Snapshot();
            Assert.Equal(0, dead.ReconnectCount);
            Assert.NotNull(dead.DeadSince);
            Assert.Contains(dead.History, e => e.Kind == SupervisionEventKind.Dead);
            Assert.Equal(1, dead.History.Count(e => e.Kind == SupervisionEventKind.ServerRefused)); // logged once, not per attempt
            Assert.True(Device(supervisor.Index).IsConnected, "the device must stay configured while dead");

            // The right image again: the supervisor, still trying, brings the device back.
            server.Kill();
            using (var f = new FileStream(image, FileMode.Open, FileAccess.Write)) f.SetLength(size);
            await Task.Run(server.Restart);
            await WaitForAsync(() => supervisor.Snapshot().State == SupervisionState.Connected, "the reconnect after the outage");
            Assert.Equal(1, supervisor.Snapshot().ReconnectCount);
            int before = DdReadLoop.KernelIoErrors(device);
            Assert.Equal(hash, HashDevice(device, size));
            Assert.Equal(0, DdReadLoop.KernelIoErrors(device) - before);
        }
        finally
        {
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
        }
    }

    /// <summary>Pids of running processes with this command name (from /proc, so no procps is needed).</summary>
    private static List<int> ProcessesNamed(string name)
    {
        var pids = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            try
            {
                if (File.ReadAllText(Path.Combine(dir, "comm")).Trim() == name) pids.Add(pid);
            }
            catch (IOException) { } // gone meanwhile
        }
        return pids;
    }

    /// <summary>The end of the kernel log (all levels: the VM console shows only warnings), for a failed test's output.</summary>
    private void DumpKernelLog()
    {
        var (_, log) = Run("dmesg");
        foreach (var line in log.Split('\n').TakeLast(60)) _output.WriteLine("dmesg: " + line);
    }

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > Slow) Assert.Fail($"gave up waiting for {what} after {Slow.TotalSeconds:0} s");
            await Task.Delay(100);
        }
    }

    /// <summary>
    /// The supervisor's host stops (as when the service restarts); the server dies and comes back while nobody watches,
    /// so the device's socket is dead. A supervisor adopted from the persisted record finds and replaces it, and then
    /// heals a second restart by itself.
    /// </summary>
    [KernelFact]
    public async Task An_adopted_device_is_healed_and_supervised_again_after_a_host_restart()
    {
        const long size = 32L << 20;
        var (image, hash) = RandomImage("adopt.img", size);
        using var server = RestartableServer.Serve(ServerKind.Nbdkit, image, "img", readOnly: true);
        var first = await Supervise([server.Uri]);
        int index = first.Index;
        string persisted = first.Record.ToJson();
        await first.DisposeAsync();
        Assert.Equal(SupervisionState.Stopped, first.Snapshot().State);
        DeviceSupervisor? adopted = null;
        try
        {
            server.Kill();
            await Task.Delay(TimeSpan.FromSeconds(1));
            await Task.Run(server.Restart);

            var record = SupervisionRecord.FromJson(persisted);
            await Assert.ThrowsAsync<NbdDeviceBusyException>(() => DeviceSupervisor.AdoptAsync(record with { BackendIdentifier = "nbd://elsewhere/img" }, _log, Options));
            adopted = await DeviceSupervisor.AdoptAsync(record, _log, Options);
            await WaitForAsync(() => adopted.Snapshot() is { State: SupervisionState.Connected, ReconnectCount: 1 }, "the adopted device to be healed");
            Assert.Contains(adopted.Snapshot().History, e => e.Kind == SupervisionEventKind.Adopted);
            Assert.Equal(hash, HashDevice($"/dev/nbd{index}", size));

            // Supervision resumed: the next loss is seen and healed by the adopted supervisor.
            await ReadThroughAsync($"/dev/nbd{index}", size, hash, () => KillAndRestartAsync(server.Kill, () => server.Restart()));
            Assert.Equal(2, adopted.Snapshot().ReconnectCount);
        }
        finally
        {
            if (adopted is not null)
            {
                await adopted.StopAsync();
                await adopted.DisposeAsync();
            }
            await DisconnectAndVerifyFreeAsync(index);
        }
        await Assert.ThrowsAsync<NbdDeviceNotFoundException>(() => DeviceSupervisor.AdoptAsync(SupervisionRecord.FromJson(persisted), _log, Options));
    }

    /// <summary>The same restart through TLS: the supervisor renegotiates TLS and gives the kernel a new relay.</summary>
    [KernelFact]
    public async Task Tls_device_reconnects_through_a_new_relay()
    {
        const long size = 32L << 20;
        var (image, hash) = RandomImage("tls.img", size);
        string certs = Directory.CreateDirectory(Path.Combine(_dir, "certs")).FullName;
        using var certificates = new TestCertificates(certs);
        using var server = Peers.PeerServer.Nbdkit("--tls=require", $"--tls-certificates={certs}", "-r", "file", image);
        var uri = server.Uri.WithTls(true).WithExportName("img");
        await using var supervisor = await Supervise([uri], tls: new SupervisionTlsFiles { CertificateAuthorityPath = Path.Combine(certs, "ca-cert.pem") });
        try
        {
            Assert.Equal(1, supervisor.Snapshot().TlsRelays);
            await ReadThroughAsync(supervisor.Attachment!.Device, size, hash, () => KillAndRestartAsync(server.Kill, server.Restart));
            var snapshot = supervisor.Snapshot();
            Assert.Equal(1, snapshot.ReconnectCount);
            Assert.Equal(1, snapshot.TlsRelays);
            Assert.StartsWith("nbds://", snapshot.Server);
        }
        finally
        {
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
        }
    }

    /// <summary>
    /// Side by side with Debian's nbd-client -persist (netlink, its default) on the same server: the same kill and
    /// restart. Ours reads on without an error; what nbd-client's device does is recorded (docs/reliability.md).
    /// </summary>
    [KernelFact]
    public async Task Side_by_side_with_nbd_client_persist_through_the_same_restart()
    {
        const long size = 32L << 20;
        var (image, hash) = RandomImage("side.img", size);
        using var server = RestartableServer.Serve(ServerKind.Nbdkit, image, "img", readOnly: true);
        await using var supervisor = await Supervise([server.Uri]);
        int theirs = FreeIndex(after: supervisor.Index);
        string theirDevice = $"/dev/nbd{theirs}";
        var (attachCode, attachOutput) = Run("nbd-client", "127.0.0.1", server.Uri.Port.ToString(CultureInfo.InvariantCulture), theirDevice,
            "-N", "img", "-b", "4096", "-persist");
        _output.WriteLine($"nbd-client -persist: exit {attachCode}: {attachOutput.Trim()}");
        Assert.Equal(0, attachCode);
        try
        {
            await WaitForAsync(() => Device(theirs).Size == size, "nbd-client's device");
            Assert.Equal(hash, HashDevice(theirDevice, size));
            int theirErrors = DdReadLoop.KernelIoErrors(theirDevice);
            await ReadThroughAsync(supervisor.Attachment!.Device, size, hash, () => KillAndRestartAsync(server.Kill, () => server.Restart()));
            Assert.Equal(1, supervisor.Snapshot().ReconnectCount);

            // nbd-client's device, after the same restart (and again 10 s later, in case it reconnects slowly).
            var findings = new List<string>();
            for (int attempt = 0; attempt < 2; attempt++)
            {
                if (attempt > 0) await Task.Delay(TimeSpan.FromSeconds(10));
                var clock = System.Diagnostics.Stopwatch.StartNew();
                var (code, output) = Run("timeout", "60", "dd", $"if={theirDevice}", "of=/dev/null", "bs=1M", "iflag=direct");
                var processes = ProcessesNamed("nbd-client");
                var info = Device(theirs);
                findings.Add($"read {attempt + 1}: dd exit {code} after {clock.Elapsed.TotalSeconds:0.0} s ({output.Trim().Replace('\n', ' ')}); " +
                    $"device connected {info.IsConnected}, size {info.Size}; nbd-client processes: {(processes.Count == 0 ? "none" : string.Join(", ", processes))}");
            }
            findings.Add($"kernel I/O errors logged for {theirDevice}: {DdReadLoop.KernelIoErrors(theirDevice) - theirErrors}");
            foreach (var line in findings) _output.WriteLine("nbd-client -persist " + line);
            if (Environment.GetEnvironmentVariable("NBDPS_RELIABILITY_LOG") is { Length: > 0 } log)
                File.AppendAllLines(log, findings.Select(f => "nbd-client -persist\t" + f));
        }
        finally
        {
            Run("nbd-client", "-d", theirDevice);
            await supervisor.StopAsync();
            await DisconnectAndVerifyFreeAsync(supervisor.Index);
            await WaitForAsync(() => !Device(theirs).IsConnected, "nbd-client's device to disconnect");
        }
    }

    /// <summary>
    /// Writes the figures the issue asks for to the test output, and appends them to $NBDPS_RELIABILITY_LOG (one line
    /// per restart) so bench/reliability.sh can take medians: when the first read completed after the restarted server
    /// accepted connections (and after its process started), and the longest time dd waited for a block around it.
    /// </summary>
    private void Report(string scenario, (DateTime Killed, DateTime Started, DateTime Accepting) restart, DdReadLoop dd)
    {
        var first = dd.FirstChunkAfter(restart.Accepting);
        double fromAccepting = first is { } f ? (f - restart.Accepting).TotalSeconds : double.NaN;
        double fromStart = first is { } g ? (g - restart.Started).TotalSeconds : double.NaN;
        double stall = dd.LongestGap(restart.Killed, first ?? DateTime.MaxValue).TotalSeconds;
        double outage = (restart.Accepting - restart.Killed).TotalSeconds;
        string line = string.Create(CultureInfo.InvariantCulture,
            $"{scenario}: server down {outage:0.00} s (start to accepting {(restart.Accepting - restart.Started).TotalSeconds:0.00} s); first read completed {fromAccepting:0.00} s after the server accepted again ({fromStart:0.00} s after its start); longest dd stall {stall:0.00} s; request timeout {RequestTimeout} s");
        _output.WriteLine(line);
        if (Environment.GetEnvironmentVariable("NBDPS_RELIABILITY_LOG") is { Length: > 0 } log)
            File.AppendAllText(log, string.Create(CultureInfo.InvariantCulture, $"{scenario}\t{fromAccepting:0.000}\t{fromStart:0.000}\t{stall:0.000}\t{outage:0.000}\n"));
    }
}
