using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// One export attached as /dev/loopN through a FUSE file this process serves. Lives until <see cref="DetachAsync"/>
/// (or the owning <see cref="FuseAttacher"/> is disposed); if this process dies the device stops working and
/// <see cref="FuseAttacher.CleanUpAsync"/> in the next owner removes what is left.
/// </summary>
public sealed class FuseAttachment
{
    private static readonly TimeSpan DefaultDetachWait = TimeSpan.FromSeconds(30);

    private readonly FuseAttacher _owner;
    private readonly FuseDiskServer _server;
    private readonly INbdBlockIo _io;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _detaching = new(1, 1);
    private bool _detached;

    internal FuseAttachment(FuseAttacher owner, FuseAttachmentRecord record, NbdUri uri, FuseDiskServer server, INbdBlockIo io, ILogger logger)
    {
        _owner = owner;
        Record = record;
        Uri = uri;
        _server = server;
        _io = io;
        _logger = logger;
    }

    /// <summary>What is persisted about this attachment (RUNTIME/fuse/ID.json).</summary>
    public FuseAttachmentRecord Record { get; }
    public string Id => Record.Id;
    public NbdUri Uri { get; }
    public int LoopIndex => Record.LoopIndex!.Value;
    public string LoopDevice => Record.LoopDevice!;
    public string MountPoint => Record.MountPoint;
    public string BackingFile => Record.BackingFile;
    public long Size => Record.Size;
    public int BlockSize => Record.BlockSize;
    public bool IsReadOnly => Record.ReadOnly;
    public bool DirectIo => Record.DirectIo;
    public int Connections => Record.Connections;
    public DateTimeOffset AttachedAt => Record.AttachedAt;

    /// <summary>False once the FUSE server stopped (detached, or its mount was removed from outside): the device then fails I/O.</summary>
    public bool IsServing => !_server.Completion.IsCompleted;

    /// <summary>Completes when the FUSE server stops.</summary>
    public Task Completion => _server.Completion;

    public FuseDiskStatistics Statistics => FuseDiskStatistics.From(_server.Counters, _io.Reconnects);

    /// <summary>The loop device as the kernel shows it now (mount points, holders, partitions); null once unbound.</summary>
    public LoopDeviceInfo? Device => Record.LoopIndex is int i && Fuse.LoopDevice.Get(i) is { } info && info.BackingFile == BackingFile ? info : null;

    /// <summary>
    /// Unbinds the loop device, makes the export's data durable (FLUSH), unmounts the FUSE file system and closes
    /// the connections. A mounted or held device (or one of its partitions) is refused unless <paramref name="force"/>;
    /// so is a device some process still has open, once <paramref name="timeout"/> has passed (it then unbinds
    /// itself when that process closes it, and the file keeps being served until then). With force, I/O that is
    /// still coming fails.
    /// </summary>
    public async Task DetachAsync(bool force = false, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        await _detaching.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_detached) return;
            var device = Device;
            if (device is not null)
            {
                if (device.IsInUse && !force)
                    throw new NbdDeviceMountedException(LoopIndex, device.MountPoints, device.Holders,
                        $"{LoopDevice} is in use ({Describe(device)}); unmount it first or use force (pending writes will fail).");
                Fuse.LoopDevice.Detach(LoopIndex);
                var limit = timeout ?? DefaultDetachWait;
                if (!await Fuse.LoopDevice.WaitUntilFreeAsync(LoopIndex, device.IsInUse ? TimeSpan.FromSeconds(Math.Min(5, limit.TotalSeconds)) : limit, ct).ConfigureAwait(false) && !force)
                    throw new NbdDeviceBusyException(LoopIndex,
                        $"{LoopDevice} was told to detach but a process still has it open after {limit.TotalSeconds:0.#} s; it detaches when that process closes it. Try again then, or use force.");
            }
            if (!IsReadOnly && IsServing)
            {
                // The loop driver does not flush on unbind: writes the kernel completed may still sit in the server's cache.
                try { await _io.FlushAsync(ct).ConfigureAwait(false); }
                catch (Exception e) when (e is NbdClientException or IOException or ObjectDisposedException)
                {
                    _logger.LogWarning("Final FLUSH to {Uri} failed: {Message}", Uri, e.Message);
                }
            }
            // The loop driver drops its reference to the file after its sysfs entry is gone, and FUSE sends the
            // RELEASE after that: wait for it, or the unmount below would find the file still open.
            for (var clock = System.Diagnostics.Stopwatch.StartNew(); _server.OpenHandles > 0 && IsServing && clock.Elapsed < TimeSpan.FromSeconds(5);)
                await Task.Delay(10, ct).ConfigureAwait(false);
            if (!FuseMount.Unmount(MountPoint, lazy: false))
            {
                // Something besides the loop device has the file open (or the loop device is still unbinding).
                if (!force) throw new NbdDeviceBusyException(LoopIndex, $"{BackingFile} is still open by a process; close it or use force.");
                FuseMount.Unmount(MountPoint, lazy: true);
            }
            await StopAsync().ConfigureAwait(false);
            _detached = true;
            _logger.LogInformation("Detached {Device} from {Uri}", LoopDevice, Uri);
        }
        finally { _detaching.Release(); }
    }

    /// <summary>Stops serving and frees what this attachment holds besides the loop device; used by detach and failed attaches.</summary>
    internal async Task StopAsync()
    {
        _server.Dispose(); // aborts the connection if it is still (lazily) mounted
        await _io.DisposeAsync().ConfigureAwait(false);
        _owner.Forget(this);
    }

    private static string Describe(LoopDeviceInfo info) =>
        string.Join("; ", new[]
        {
            info.MountPoints.Count > 0 ? "mounted at " + string.Join(", ", info.MountPoints) : null,
            info.Holders.Count > 0 ? "held by " + string.Join(", ", info.Holders) : null,
        }.Where(s => s is not null));
}
