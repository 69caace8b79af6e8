using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// Attaches NBD exports as block devices without the nbd driver: the export becomes a file in a FUSE file system
/// this process serves (RUNTIME/fuse/ID/disk) and the loop driver turns that file into /dev/loopN. One instance
/// per host process (the service) owns all its attachments: it lists them with statistics, detaches them, and
/// after a crash of an earlier owner cleans up what that one left (<see cref="CleanUpAsync"/>).
/// </summary>
public sealed class FuseAttacher : IAsyncDisposable
{
    private static readonly TimeSpan InitTimeout = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<string, FuseAttachment> _attachments = new();
    private readonly FuseRuntimeDirectory _runtime;
    private readonly ILogger _logger;
    private int _exitHooked;

    /// <param name="runtimeDirectory">Where RUNTIME/fuse lives; null takes NBDPOWERSHELL_RUNTIME_DIR, else /run/nbdpowershell.</param>
    public FuseAttacher(string? runtimeDirectory = null, ILogger? logger = null)
    {
        _runtime = new FuseRuntimeDirectory(runtimeDirectory ?? FuseRuntimeDirectory.DefaultRuntimeDirectory);
        _logger = logger ?? NullLogger.Instance;
    }

    private void OnProcessExit(object? sender, EventArgs e)
    {
        if (_attachments.IsEmpty) return;
        try { DetachAllAsync(TimeSpan.FromSeconds(2)).Wait(TimeSpan.FromSeconds(20)); }
        catch (AggregateException) { } // logged per attachment; the process is going away regardless
    }

    /// <summary>RUNTIME/fuse: the mount points and records of the attachments.</summary>
    public string Directory => _runtime.Path;

    /// <summary>The attachments this instance serves.</summary>
    public IReadOnlyCollection<FuseAttachment> Attachments => _attachments.Values.OrderBy(a => a.AttachedAt).ToList();

    /// <summary>Records of every attachment in the runtime directory, including other processes' and dead ones.</summary>
    public IReadOnlyList<FuseAttachmentRecord> ReadRecords() => _runtime.LoadAll();

    /// <summary>
    /// Throws the reason attaching through FUSE cannot work here, with what to do about it: not Linux, not root,
    /// no /dev/fuse, no loop driver. Cheap; callers choosing between the nbd driver and FUSE call it first.
    /// </summary>
    public static void EnsureAvailable()
    {
        KernelPreconditions.EnsureLinux();
        if (!KernelPreconditions.IsAdmin())
            throw new NbdPermissionDeniedException("Attaching through FUSE and a loop device must run as root (mounting and binding loop devices need CAP_SYS_ADMIN); run PowerShell with sudo.");
        if (!File.Exists("/dev/fuse"))
            throw new NbdFuseUnavailableException("/dev/fuse is missing: load the fuse module (modprobe fuse); in a container, pass the device (docker run --device /dev/fuse --cap-add SYS_ADMIN).");
        if (!File.Exists("/dev/loop-control") && !System.IO.Directory.Exists("/sys/module/loop"))
            throw new NbdLoopUnavailableException("The loop driver is not available (/dev/loop-control is missing): load it with modprobe loop; in a container, run it with --privileged.");
    }

    /// <summary>
    /// Connects to <paramref name="uri"/> (TLS per the URI and <paramref name="client"/>), serves the export as a
    /// FUSE file and binds a loop device to it. Several connections only where the export allows multi-conn.
    /// Everything done so far is undone when a step fails or <paramref name="ct"/> fires.
    /// </summary>
    public async Task<FuseAttachment> AttachAsync(NbdUri uri, FuseAttachOptions? options = null, NbdClientOptions? client = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= new FuseAttachOptions();
        if (options.Connections is < 1) throw new ArgumentOutOfRangeException(nameof(options), options.Connections, "Connections must be at least 1.");
        if (options.MaxInFlight is < 1 or > ushort.MaxValue) throw new ArgumentOutOfRangeException(nameof(options), options.MaxInFlight, "MaxInFlight must be 1..65535.");
        EnsureAvailable();

        var blockClient = await NbdBlockClient.ConnectAsync(uri, new NbdBlockClientOptions
        {
            Client = client ?? NbdClientOptions.Default,
            Connections = options.Connections ?? FuseAttachOptions.DefaultMultiConnections, // one where the export has no multi-conn
            MaxInFlightPerConnection = Math.Min(options.MaxInFlight, 1024),
            InlineCompletions = true,
            Reconnect = true,
        }, ct).ConfigureAwait(false);
        if (options.Connections is > 1 && !blockClient.CanMultiConn)
        {
            await blockClient.DisposeAsync().ConfigureAwait(false);
            throw new NbdMultiConnNotSupportedException($"{blockClient.Uri} does not advertise CAN_MULTI_CONN, so it cannot be attached with {options.Connections} connections; use one connection.");
        }
        var export = blockClient.Export;
        return await AttachAsync(new NbdBlockClientIo(blockClient), options, export.MinimumBlockSize, export.PreferredBlockSize, ct: ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Serves <paramref name="io"/> (which this call owns from here on, also when it fails) as a FUSE file and binds a
    /// loop device to it. The block-size hints are the export's NBD_INFO_BLOCK_SIZE minimum and preferred sizes.
    /// </summary>
    internal async Task<FuseAttachment> AttachAsync(INbdBlockIo io, FuseAttachOptions options, int? minimumBlockSize, int? preferredBlockSize, int readers = 2, CancellationToken ct = default)
    {
        bool readOnly = options.ReadOnly || io.Flags.HasFlag(TransmissionFlags.ReadOnly);
        int blockSize;
        try
        {
            if (io.Size <= 0) throw new NbdFuseException($"{io.Uri} is empty (size {io.Size}); there is nothing to attach.");
            blockSize = KernelAttacher.ChooseBlockSize(io.Size, minimumBlockSize, preferredBlockSize, options.BlockSize, Environment.SystemPageSize);
        }
        catch
        {
            await io.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        string id = Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant();
        int pid = Environment.ProcessId;
        var record = new FuseAttachmentRecord
        {
            Id = id, Uri = io.Uri.ToString(), MountPoint = _runtime.MountPointOf(id), BackingFile = _runtime.BackingFileOf(id),
            Size = io.Size, BlockSize = blockSize, ReadOnly = readOnly, Connections = io.Connections,
            OwnerPid = pid, OwnerStartTime = FuseRuntimeDirectory.StartTimeOf(pid), AttachedAt = DateTimeOffset.UtcNow, Options = options,
        };
        var serverOptions = new FuseDiskServerOptions
        {
            ReadOnly = readOnly, BlockSize = blockSize, MaxInFlight = options.MaxInFlight, Readers = readers, Uid = Libc.GetEuid(), Gid = Libc.GetEgid(),
        };

        FuseDiskServer? server = null;
        int? loop = null;
        try
        {
            _runtime.CreateMountPoint(id);
            _runtime.Save(record); // before mounting: a crash from here on leaves something cleanup can attribute
            var device = FuseMount.Mount(record.MountPoint, id, readOnly, serverOptions.MaxRequestBytes, serverOptions.Uid, serverOptions.Gid);
            server = new FuseDiskServer(device, io, serverOptions, _logger);
            server.Start();
            await server.Initialized.WaitAsync(InitTimeout, ct).ConfigureAwait(false);

            loop = await Task.Run(() => LoopDevice.Attach(record.BackingFile, readOnly, options.DirectIo, blockSize), ct).ConfigureAwait(false);
            var info = LoopDevice.Get(loop.Value) ?? throw new NbdFuseException($"/dev/loop{loop} vanished right after it was bound.");
            long expected = io.Size / blockSize * blockSize;
            if (info.Size != expected)
                throw new NbdFuseException($"/dev/loop{loop} shows {info.Size} bytes instead of {expected}.");
            if (options.DirectIo && !info.DirectIo)
                _logger.LogWarning("The loop driver refused direct I/O on {File}; pages are cached in the loop device only (the FUSE file is uncached)", record.BackingFile);
            record = record with { LoopIndex = loop, DirectIo = info.DirectIo };
            _runtime.Save(record);

            var attachment = new FuseAttachment(this, record, io.Uri, server, io, _logger);
            _attachments[id] = attachment;
            // The devices cannot outlive this process (it serves them): on a normal exit, SIGTERM included, take
            // them down instead of leaving dead mounts for the next cleanup. Only SIGKILL and crashes skip this.
            if (Interlocked.Exchange(ref _exitHooked, 1) == 0)
                AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
            _logger.LogInformation("Attached {Uri} as {Device} through FUSE ({Connections} connection(s), {Mode})", io.Uri, record.LoopDevice, io.Connections, readOnly ? "read-only" : "read-write");
            return attachment;
        }
        catch (Exception e)
        {
            _logger.LogWarning("Attaching {Uri} through FUSE failed ({Message}); undoing", io.Uri, e.Message);
            if (loop is int index)
            {
                try
                {
                    LoopDevice.Detach(index);
                    await LoopDevice.WaitUntilFreeAsync(index, TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
                }
                catch (NbdFuseException undo) { _logger.LogWarning("Could not unbind /dev/loop{Index}: {Message}", index, undo.Message); }
            }
            try { FuseMount.Unmount(record.MountPoint, lazy: true); }
            catch (NbdFuseException undo) { _logger.LogWarning("Could not unmount {MountPoint}: {Message}", record.MountPoint, undo.Message); }
            server?.Dispose();
            await io.DisposeAsync().ConfigureAwait(false);
            _runtime.Remove(id);
            throw;
        }
    }

    /// <summary>Finds an attachment of this instance by id or loop device (/dev/loopN).</summary>
    public FuseAttachment? Find(string idOrDevice) =>
        _attachments.TryGetValue(idOrDevice, out var a) ? a : _attachments.Values.FirstOrDefault(x => x.LoopDevice == idOrDevice);

    internal void Forget(FuseAttachment attachment)
    {
        _attachments.TryRemove(attachment.Id, out _);
        _runtime.Remove(attachment.Id);
    }

    /// <summary>
    /// Removes what dead owners left in the runtime directory: loop devices bound to our FUSE files, FUSE mounts of
    /// type fuse.nbdpowershell on our mount points, the mount point directories and the records. Attachments whose
    /// owner process still runs (this one included) are left alone, and so is everything outside RUNTIME/fuse.
    /// A loop device that is still mounted or held is told to unbind when released (its FUSE mount goes lazily),
    /// unless <paramref name="force"/>, which does the same but counts it as cleaned.
    /// </summary>
    public async Task<FuseCleanupReport> CleanUpAsync(bool force = false, CancellationToken ct = default)
    {
        KernelPreconditions.EnsureLinux();
        var mounts = FuseMount.List().Where(m => _runtime.TryGetId(m.MountPoint, backingFile: false, out _)).ToList();
        var loops = LoopDevice.List().Where(l => _runtime.TryGetId(l.BackingFile, backingFile: true, out _)).ToList();
        var ids = _runtime.RecordIds().Concat(_runtime.MountPointIds())
            .Concat(mounts.Select(m => m.Id))
            .Concat(loops.Select(l => Path.GetFileName(Path.GetDirectoryName(l.BackingFile)!)))
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();

        var cleaned = new List<FuseCleanupEntry>();
        var skipped = new List<FuseCleanupEntry>();
        foreach (string id in ids)
        {
            ct.ThrowIfCancellationRequested();
            var record = _runtime.Load(id);
            string mountPoint = _runtime.MountPointOf(id);
            bool mounted = mounts.Any(m => m.MountPoint == mountPoint);
            var entry = new FuseCleanupEntry { Id = id, Uri = record?.Uri, MountPoint = mountPoint };
            if (_attachments.ContainsKey(id))
            {
                skipped.Add(entry with { Actions = ["served by this process"] });
                continue;
            }
            if (record is not null && FuseRuntimeDirectory.IsOwnerAlive(record))
            {
                skipped.Add(entry with { Actions = [$"served by process {record.OwnerPid}, which still runs"] });
                continue;
            }
            if (record is null && mounted && Libc.Access(mountPoint, 0) == 0)
            {
                skipped.Add(entry with { Actions = ["no record, and its FUSE file system still answers (a live server)"] });
                continue;
            }

            var actions = new List<string>();
            bool complete = true;
            var devices = new List<string>();
            foreach (var loop in loops.Where(l => l.BackingFile == _runtime.BackingFileOf(id)))
            {
                devices.Add(loop.Device);
                try
                {
                    LoopDevice.Detach(loop.Index);
                    if (loop.IsInUse)
                    {
                        actions.Add($"{loop.Device} is in use ({string.Join(", ", loop.MountPoints.Concat(loop.Holders))}): set to detach when released");
                        complete &= force;
                    }
                    else if (await LoopDevice.WaitUntilFreeAsync(loop.Index, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false))
                        actions.Add($"detached {loop.Device}");
                    else
                    {
                        actions.Add($"{loop.Device} is still open by a process: set to detach when released");
                        complete &= force;
                    }
                }
                catch (NbdFuseException e)
                {
                    actions.Add($"could not detach {loop.Device}: {e.Message}");
                    complete = false;
                }
            }
            if (mounted)
            {
                try
                {
                    // A loop device just unbound may hold the file for a moment longer.
                    bool unmounted = FuseMount.Unmount(mountPoint, lazy: false);
                    for (int retry = 0; !unmounted && retry < 20; retry++)
                    {
                        await Task.Delay(50, ct).ConfigureAwait(false);
                        unmounted = FuseMount.Unmount(mountPoint, lazy: false);
                    }
                    if (unmounted) actions.Add($"unmounted {mountPoint}");
                    else
                    {
                        FuseMount.Unmount(mountPoint, lazy: true);
                        actions.Add($"unmounted {mountPoint} lazily (its file is still held)");
                    }
                }
                catch (NbdFuseException e)
                {
                    actions.Add($"could not unmount {mountPoint}: {e.Message}");
                    complete = false;
                }
            }
            _runtime.Remove(id);
            actions.Add(record is null ? "removed the mount point" : "removed the record and the mount point");
            cleaned.Add(entry with { LoopDevices = devices, Actions = actions, IsComplete = complete });
            _logger.LogInformation("Cleaned up FUSE attachment {Id} ({Uri}): {Actions}", id, record?.Uri ?? "no record", string.Join("; ", actions));
        }
        return new FuseCleanupReport { Cleaned = cleaned, Skipped = skipped };
    }

    /// <summary>Detaches every attachment (forced: the owner is going away, and the devices cannot outlive it).</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _exitHooked, 0) == 1)
            AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        await DetachAllAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
    }

    private async Task DetachAllAsync(TimeSpan wait)
    {
        foreach (var attachment in _attachments.Values)
        {
            try { await attachment.DetachAsync(force: true, timeout: wait).ConfigureAwait(false); }
            catch (Exception e) when (e is NbdKernelException or IOException)
            {
                _logger.LogWarning("Detaching {Device} failed: {Message}", attachment.LoopDevice, e.Message);
            }
        }
    }
}

/// <summary>What <see cref="FuseAttacher.CleanUpAsync"/> found and did.</summary>
public sealed record FuseCleanupReport
{
    /// <summary>Attachments of dead owners, with what was done to each.</summary>
    public IReadOnlyList<FuseCleanupEntry> Cleaned { get; init; } = [];
    /// <summary>Attachments left alone because their owner still serves them.</summary>
    public IReadOnlyList<FuseCleanupEntry> Skipped { get; init; } = [];
}

public sealed record FuseCleanupEntry
{
    public required string Id { get; init; }
    public string? Uri { get; init; }
    public required string MountPoint { get; init; }
    public IReadOnlyList<string> LoopDevices { get; init; } = [];
    public IReadOnlyList<string> Actions { get; init; } = [];
    /// <summary>Nothing of it remains (false when a loop device in use only unbinds once released).</summary>
    public bool IsComplete { get; init; }
}
