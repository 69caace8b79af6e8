using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// Binds negotiated NBD sockets to /dev/nbdN (generic netlink first, ioctls as fallback) and takes devices down again.
/// The attach calls take ownership of the sockets: after the kernel holds them our descriptors are closed.
/// </summary>
public sealed class KernelAttacher
{
    private static readonly TimeSpan DefaultDisconnectWait = TimeSpan.FromSeconds(30);
    private readonly ILogger _logger;
    private readonly string _sysRoot;
    private readonly string _devRoot;

    public KernelAttacher(ILogger? logger = null, string sysRoot = "/sys", string devRoot = "/dev")
    {
        _logger = logger ?? NullLogger.Instance;
        _sysRoot = sysRoot;
        _devRoot = devRoot;
    }

    private NbdDeviceDiscovery Discovery => new(_sysRoot, "/proc/self/mountinfo", new NetlinkStatusProvider(), _devRoot);

    /// <summary>
    /// Attaches one export through one or more connections, all negotiated to the same export.
    /// Refuses more than one connection unless the export advertises CAN_MULTI_CONN.
    /// TLS connections are attached through a <see cref="TlsRelay"/> each, returned in <see cref="AttachResult.Relays"/>:
    /// the caller owns them and must keep them running as long as the device should work (and stop them after
    /// <see cref="DisconnectAsync"/>); the backend identifier is then the nbds:// URI.
    /// </summary>
    public async Task<AttachResult> AttachAsync(IReadOnlyList<NbdNegotiatedConnection> connections, AttachOptions options, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(connections);
        if (connections.Count == 0) throw new ArgumentException("At least one connection is needed.", nameof(connections));
        var first = connections[0];
        foreach (var c in connections.Skip(1))
            if (c.Size != first.Size || c.Flags != first.Flags)
                throw new NbdKernelException($"The connections disagree about the export: size {c.Size} vs {first.Size}, flags {c.Flags} vs {first.Flags}.");
        if (!options.ReadOnly && first.IsReadOnly) options = options with { ReadOnly = true };
        if (options.BackendIdentifier is null) options = options with { BackendIdentifier = first.Uri.ToString() };
        var sockets = new List<Socket>(connections.Count);
        var relays = new List<TlsRelay>();
        try
        {
            foreach (var c in connections)
            {
                var (kernelEnd, relay) = HandOver(c, _logger);
                if (relay is not null) relays.Add(relay);
                sockets.Add(kernelEnd);
            }
        }
        catch
        {
            foreach (var s in sockets) s.Dispose();
            foreach (var r in relays) r.Stop();
            throw;
        }
        AttachResult result;
        try
        {
            result = await AttachAsync(sockets, first.Size, first.Flags, options, first.Export.MinimumBlockSize, first.Export.PreferredBlockSize, ct).ConfigureAwait(false);
        }
        catch
        {
            foreach (var r in relays) r.Stop();
            throw;
        }
        if (relays.Count == 0) return result;
        _logger.LogInformation("{Device} reaches {Uri} through {Count} TLS relay(s) in this process", result.Device, first.Uri, relays.Count);
        return result with { Relays = relays };
    }

    /// <summary>
    /// Attaches already-negotiated sockets (e.g. one end of a socketpair served in-process).
    /// <paramref name="flags"/> are the export's transmission flags; the sockets are owned (and closed) by this call.
    /// </summary>
    public async Task<AttachResult> AttachAsync(IReadOnlyList<Socket> sockets, long size, TransmissionFlags flags, AttachOptions options,
        int? minimumBlockSize = null, int? preferredBlockSize = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(sockets);
        ArgumentNullException.ThrowIfNull(options);
        try
        {
            if (sockets.Count == 0) throw new ArgumentException("At least one socket is needed.", nameof(sockets));
            if (size < 0) throw new ArgumentOutOfRangeException(nameof(size));
            if (sockets.Count > 1 && !flags.HasFlag(TransmissionFlags.CanMultiConn))
                throw new NbdMultiConnNotSupportedException($"The export does not advertise CAN_MULTI_CONN, so it cannot be attached with {sockets.Count} connections; use one connection.");
            KernelPreconditions.EnsureAdmin();
            KernelPreconditions.EnsureModuleLoaded(_sysRoot);
            if (options.Index is int wanted) EnsureDeviceFree(wanted);

            int blockSize = ChooseBlockSize(size, minimumBlockSize, preferredBlockSize, options.BlockSize, Environment.SystemPageSize);
            var serverFlags = flags | TransmissionFlags.HasFlags;
            if (options.ReadOnly) serverFlags |= TransmissionFlags.ReadOnly;

            foreach (var s in sockets) MakeBlocking(s);
            var mode = options.Mode;
            NbdNetlinkFamily? family = null;
            if (mode != AttachMode.Ioctl)
            {
                family = OpenFamily();
                if (family is null && mode == AttachMode.Netlink)
                    throw new NbdKernelModuleMissingException("The kernel has no generic netlink family \"nbd\" (nbd module too old or not loaded); load it with: modprobe nbd, or use ioctl mode.");
                mode = family is null ? AttachMode.Ioctl : AttachMode.Netlink;
            }

            int index;
            IoctlSession? session = null;
            using (family)
            {
                if (mode == AttachMode.Netlink) index = ConnectNetlink(family!, sockets, size, blockSize, serverFlags, options);
                else
                {
                    if (sockets.Count > 1) throw new NbdKernelException("ioctl mode supports only one connection per device; use netlink mode for multi-conn.");
                    index = options.Index ?? FirstFreeIndex();
                    session = IoctlSession.Start(index, DevicePath(index), (int)sockets[0].SafeHandle.DangerousGetHandle(), size, blockSize, (ulong)serverFlags, options.ReadOnly, options.Timeout);
                }
            }
            _logger.LogInformation("Attached {Device} ({Mode}, {Size} bytes, block size {BlockSize}, {Count} connection(s))", DevicePath(index), mode, size, blockSize, sockets.Count);
            try
            {
                await WaitUntilReadyAsync(index, size / blockSize * blockSize, session, options.ReadyTimeout, ct).ConfigureAwait(false);
            }
            catch
            {
                // The kernel has the sockets: a failed or cancelled wait must not leave nbdN attached.
                UndoAttach(index, mode, session);
                throw;
            }
            return new AttachResult
            {
                Index = index, Mode = mode, Size = size, BlockSize = blockSize, Connections = sockets.Count,
                IsReadOnly = options.ReadOnly || flags.HasFlag(TransmissionFlags.ReadOnly),
                BackendIdentifier = mode == AttachMode.Netlink ? options.BackendIdentifier : null,
            };
        }
        finally
        {
            // The kernel holds its own references now (or the attach failed): our descriptors can go.
            foreach (var s in sockets) s.Dispose();
        }
    }

    /// <summary>
    /// Disconnects /dev/nbdN (netlink DISCONNECT, or ioctl DISCONNECT + CLEAR_SOCK) and waits until it is free.
    /// A mounted or held device is refused unless <paramref name="force"/>.
    /// </summary>
    public async Task DisconnectAsync(int index, bool force = false, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        KernelPreconditions.EnsureAdmin();
        KernelPreconditions.EnsureModuleLoaded(_sysRoot);
        var info = Discovery.GetDevice(index) ?? throw new NbdDeviceNotFoundException(index, $"{DevicePath(index)} does not exist.");
        if (!info.IsConnected && info.Pid is null)
            return;
        if (info.IsInUse && !force)
            throw new NbdDeviceMountedException(index, info.MountPoints, info.Holders,
                $"{info.Device} is in use ({Describe(info)}); unmount it first or use force (pending writes will fail).");

        if (IoctlSession.Find(index) is { } session) session.RequestDisconnect();
        else if (info.Mode != AttachMode.Ioctl && OpenFamily() is { } family)
        {
            using (family)
            {
                try { family.Disconnect(index); }
                catch (NetlinkException e) { throw MapErrno(e.Errno, index, "NBD_CMD_DISCONNECT", e); }
            }
        }
        else
        {
            int fd = NbdIoctl.OpenDevice(DevicePath(index), index);
            try
            {
                NbdIoctl.Call(fd, NbdIoctl.DISCONNECT, 0, "NBD_DISCONNECT", index);
                Libc.Ioctl(fd, NbdIoctl.CLEAR_SOCK, 0); // fails harmlessly while DO_IT's owner still clears up
            }
            finally { Libc.Close(fd); }
        }

        // Openers (a forced mount) keep the config alive; then "free" only comes after they let go.
        var limit = timeout ?? DefaultDisconnectWait;
        if (!await WaitUntilFreeAsync(index, info.IsInUse ? TimeSpan.FromSeconds(Math.Min(5, limit.TotalSeconds)) : limit, ct).ConfigureAwait(false) && !info.IsInUse)
            throw new NbdDeviceBusyException(index, $"{DevicePath(index)} was told to disconnect but is still configured after {limit.TotalSeconds:0.#} s; a process may hold it open.");
        _logger.LogInformation("Disconnected {Device}", DevicePath(index));
    }

    /// <summary>
    /// The logical block size to announce: the request if given, else 4096, lowered to the server's preferred size,
    /// raised to its minimum, and lowered until it divides the export size; always a power of two in 512..page size.
    /// </summary>
    public static int ChooseBlockSize(long size, int? minimum, int? preferred, int? requested, int pageSize)
    {
        int max = Math.Min(4096, Math.Max(512, pageSize));
        if (requested is int r)
        {
            if (r < 512 || r > pageSize || (r & (r - 1)) != 0)
                throw new ArgumentOutOfRangeException(nameof(requested), r, $"Block size must be a power of two between 512 and {pageSize}.");
            return r;
        }
        int bs = max;
        if (preferred is int p && p >= 512 && p < bs) bs = (int)RoundDownPow2(p);
        if (minimum is int m && m > bs) bs = (int)Math.Min(max, RoundUpPow2(m));
        while (bs > 512 && size % bs != 0) bs /= 2;
        return bs;
    }

    private static long RoundDownPow2(long v) { long p = 1; while (p * 2 <= v) p *= 2; return p; }
    private static long RoundUpPow2(long v) { long p = 1; while (p < v) p *= 2; return p; }

    private int ConnectNetlink(NbdNetlinkFamily family, IReadOnlyList<Socket> sockets, long size, int blockSize, TransmissionFlags serverFlags, AttachOptions options)
    {
        var request = new NbdNetlinkFamily.ConnectRequest
        {
            Index = options.Index,
            SocketFds = sockets.Select(s => (int)s.SafeHandle.DangerousGetHandle()).ToList(),
            SizeBytes = size,
            BlockSizeBytes = blockSize,
            ServerFlags = (ulong)serverFlags,
            TimeoutSeconds = options.Timeout is { } t ? (ulong)Math.Max(1, Math.Ceiling(t.TotalSeconds)) : null,
            DeadConnTimeoutSeconds = options.DeadConnectionTimeout is { } d ? (ulong)Math.Max(0, Math.Ceiling(d.TotalSeconds)) : null,
            BackendIdentifier = options.BackendIdentifier,
        };
        try { return family.Connect(request); }
        catch (NetlinkException e)
        {
            if (e.Errno == Libc.EINVAL && sockets.Count > 1)
                throw new NbdMultiConnNotSupportedException($"The kernel refused {sockets.Count} connections (EINVAL): the server lacks multi-conn, or the parameters are invalid (block size {blockSize}).");
            throw MapErrno(e.Errno, options.Index, "NBD_CMD_CONNECT", e);
        }
    }

    private NbdKernelException MapErrno(int errno, int? index, string operation, Exception inner)
    {
        string device = index is int i ? DevicePath(i) : "an nbd device";
        return errno switch
        {
            Libc.EPERM or Libc.EACCES => new NbdPermissionDeniedException($"{operation} was refused ({Libc.StrError(errno)}): must run as root with CAP_SYS_ADMIN in the initial user namespace.", errno, inner),
            Libc.EBUSY => new NbdDeviceBusyException(index ?? -1, $"{device} is busy: it is already connected or being set up by another task.", errno, inner),
            Libc.ENOENT or Libc.ENODEV => new NbdDeviceNotFoundException(index ?? -1, $"{device} does not exist ({Libc.StrError(errno)}).", errno),
            Libc.EINVAL => new NbdKernelException($"{operation} on {device} failed: the kernel rejected the parameters (EINVAL): check size, block size and that the sockets are connected stream sockets.", errno, inner),
            _ => new NbdKernelException($"{operation} on {device} failed: {Libc.StrError(errno)} (errno {errno}).", errno, inner),
        };
    }

    private void EnsureDeviceFree(int index)
    {
        var info = Discovery.GetDevice(index) ?? throw new NbdDeviceNotFoundException(index,
            $"{DevicePath(index)} does not exist (the nbd module has nbds_max devices; omit the index to let the kernel create one).");
        if (info.IsConnected || info.Pid is not null)
            throw new NbdDeviceBusyException(index, $"{info.Device} is already connected{(info.BackendIdentifier is { } b ? $" to {b}" : "")}; disconnect it first or pick another index.");
    }

    private int FirstFreeIndex()
    {
        foreach (var d in Discovery.GetDevices())
            if (!d.IsConnected && d.Pid is null && d.Size == 0 && IoctlSession.Find(d.Index) is null) return d.Index;
        throw new NbdDeviceBusyException(-1, "Every nbd device is in use; disconnect one or load the module with a larger nbds_max.");
    }

    private static NbdNetlinkFamily? OpenFamily()
    {
        try { return NbdNetlinkFamily.TryOpen(); }
        catch (NetlinkException) { return null; }
    }

    /// <summary>
    /// Takes the transport out of a negotiated connection and returns the socket to give the kernel: the connection's
    /// own socket, or for TLS one end of a socketpair whose other end a new <see cref="TlsRelay"/> pumps to the server.
    /// </summary>
    internal static (Socket KernelEnd, TlsRelay? Relay) HandOver(NbdNegotiatedConnection connection, ILogger logger)
    {
        if (!connection.IsTls) return (connection.DetachSocket(), null);
        var (socket, stream) = connection.DetachTransport();
        return TlsRelay.Start(socket, stream, connection.Uri.ToString(), logger);
    }

    /// <summary>.NET leaves sockets non-blocking after async I/O; the kernel expects the blocking sockets nbd-client gives it.</summary>
    internal static void MakeBlocking(Socket socket) => Libc.SetBlocking(socket);

    private void UndoAttach(int index, AttachMode mode, IoctlSession? session)
    {
        try
        {
            if (session != null)
                session.RequestDisconnect();
            else if (mode == AttachMode.Netlink)
            {
                using var family = OpenFamily();
                family?.Disconnect(index);
            }
        }
        catch (Exception e) when (e is NbdKernelException or IOException)
        {
            _logger.LogWarning("Could not undo the attach of {Device}: {Message}", DevicePath(index), e.Message);
        }
    }

    /// <param name="size">The size the kernel will show: the export's size rounded down to the block size.</param>
    private async Task WaitUntilReadyAsync(int index, long size, IoctlSession? session, TimeSpan limit, CancellationToken ct)
    {
        string dir = Path.Combine(_sysRoot, "block", $"nbd{index}");
        long expected = size / 512;
        var clock = Stopwatch.StartNew();
        while (true)
        {
            bool sized = long.TryParse(ReadTrim(Path.Combine(dir, "size")), out long sectors) && sectors == expected;
            bool configured = File.Exists(Path.Combine(dir, "pid"));
            if (sized && configured && File.Exists(DevicePath(index))) return;
            if (session is { Completion.IsCompleted: true })
                throw new NbdKernelException($"NBD_DO_IT on {DevicePath(index)} ended at once: {Libc.StrError(session.DoItErrno)}.", session.DoItErrno);
            if (clock.Elapsed > limit)
                throw new NbdKernelException($"{DevicePath(index)} did not become ready within {limit.TotalSeconds:0.#} s (size {sectors} sectors, expected {expected}).");
            await Task.Delay(20, ct).ConfigureAwait(false);
        }
    }

    private async Task<bool> WaitUntilFreeAsync(int index, TimeSpan limit, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < limit)
        {
            var info = Discovery.GetDevice(index);
            if (info is null || (!info.IsConnected && info.Pid is null && IoctlSession.Find(index) is null)) return true;
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
        return false;
    }

    private static string? ReadTrim(string path)
    {
        try { return File.Exists(path) ? File.ReadAllText(path).Trim() : null; }
        catch (IOException) { return null; }
    }

    private string DevicePath(int index) => Path.Combine(_devRoot, $"nbd{index}");

    private static string Describe(NbdDeviceInfo info) =>
        string.Join("; ", new[]
        {
            info.MountPoints.Count > 0 ? "mounted at " + string.Join(", ", info.MountPoints) : null,
            info.Holders.Count > 0 ? "held by " + string.Join(", ", info.Holders) : null,
        }.Where(s => s is not null));
}
