using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// A FUSE file system with one regular file, <see cref="DiskFileName"/>, whose bytes are an NBD export.
///
/// Why /dev/fuse directly and not libfuse3 through P/Invoke: libfuse3 is a native library that container hosts and
/// minimal images often lack (the module would have to ship or demand it), its session loop owns the threads and
/// calls back into managed code per request, and its mount helper (fusermount3) is another binary to find. The
/// kernel protocol for one file is small: INIT, LOOKUP/GETATTR, OPEN/RELEASE, READ/WRITE, FSYNC/FLUSH, FALLOCATE,
/// READDIR and STATFS. Speaking it here gives us the threads (a few dedicated readers), the concurrency (I/O
/// requests are answered asynchronously, out of order, many at once), the INIT flags (async direct I/O, 1 MiB
/// requests through max_pages) and the exit paths (stopping closes the device, which aborts the connection).
///
/// Requests are read by <see cref="FuseDiskServerOptions.Readers"/> dedicated threads into pooled pinned buffers.
/// Metadata requests are answered on the reader thread; READ, WRITE, FSYNC, FLUSH and FALLOCATE go to the NBD
/// export asynchronously and are answered from whichever thread completes them, with the buffer that carried the
/// request also carrying the reply, so no data is copied between the NBD socket and /dev/fuse beyond the two
/// unavoidable syscall copies. Splice (zero-copy through pipes) is not used: it would need the NBD socket itself,
/// which the TLS path and the one-request-per-connection client cannot hand out.
/// </summary>
internal sealed class FuseDiskServer : IDisposable
{
    public const string DiskFileName = "disk";
    private const ulong RootNode = 1;
    private const ulong DiskNode = 2;
    private const uint ProtocolMajor = 7;
    /// <summary>The minor version of &lt;linux/fuse.h&gt; the layouts in FuseWire.cs come from.</summary>
    private const uint ProtocolMinor = 38;
    /// <summary>7.23 made fuse_init_out its full 64 bytes (and 7.22 brought async direct I/O): kernels from 3.15.</summary>
    private const uint OldestKernelMinor = 23;
    private const int InHeaderSize = 40;
    private const int OutHeaderSize = 16;
    private const int WriteInSize = 40;
    /// <summary>Attributes and names never change while mounted, so the kernel may cache them for a day.</summary>
    private const ulong CacheSeconds = 86400;
    private const uint S_IFDIR = 0x4000;
    private const uint S_IFREG = 0x8000;
    private const uint DT_DIR = 4;
    private const uint DT_REG = 8;
    private const int O_ACCMODE = 3;
    private const int PollIntervalMs = 500;

    private static readonly FuseInitFlags WantedFlags =
        FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.AsyncDio | FuseInitFlags.MaxPages |
        FuseInitFlags.ParallelDirOps | FuseInitFlags.HandleKillPriv;

    private readonly SafeFileHandle _device;
    private readonly INbdBlockIo _io;
    private readonly FuseDiskServerOptions _options;
    private readonly ILogger _logger;
    private readonly FuseRequestPool _requests;
    private readonly Action<FuseRequest, Exception?> _readDone;
    private readonly Action<FuseRequest, Exception?> _writeDone;
    private readonly Action<FuseRequest, Exception?> _flushDone;
    private readonly Action<FuseRequest, Exception?> _zeroDone;
    private readonly FuseDiskCounters _counters = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly TaskCompletionSource _initialized = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<Thread> _readers = new();
    private readonly DateTimeOffset _mountTime = DateTimeOffset.UtcNow;
    private readonly bool _canZero;
    private int _runningReaders;
    private int _openHandles;
    private long _nextHandle;
    private long _pending;
    private int _disposed;

    /// <param name="device">/dev/fuse opened O_RDWR | O_NONBLOCK and mounted; the server owns it from here on.</param>
    public FuseDiskServer(SafeFileHandle device, INbdBlockIo io, FuseDiskServerOptions options, ILogger logger)
    {
        _device = device;
        _io = io;
        _options = options;
        _logger = logger;
        _canZero = io.Flags.HasFlag(TransmissionFlags.SendWriteZeroes);
        // A WRITE carries headers before max_write data bytes; the kernel refuses reads into anything smaller.
        _requests = new FuseRequestPool(options.MaxRequestBytes + 4096, options.MaxInFlight + options.Readers);
        _readDone = ReadDone;
        _writeDone = WriteDone;
        _flushDone = FlushDone;
        _zeroDone = ZeroDone;
    }

    /// <summary>Completes when the kernel's INIT has been answered; faults when the kernel speaks a protocol we cannot.</summary>
    public Task Initialized => _initialized.Task;

    /// <summary>Completes when every reader has stopped: the file system was unmounted, aborted, or <see cref="Dispose"/> ran.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Handles the kernel holds open on the disk file (the loop device holds one while attached).</summary>
    public int OpenHandles => Volatile.Read(ref _openHandles);

    internal FuseDiskCounters Counters => _counters;

    public void Start()
    {
        _runningReaders = _options.Readers;
        for (int i = 0; i < _options.Readers; i++)
        {
            var thread = new Thread(ReaderLoop) { IsBackground = true, Name = $"fuse reader {i}" };
            _readers.Add(thread);
            thread.Start();
        }
    }

    private void ReaderLoop()
    {
        // The threads serve a block device's I/O: an allocation of theirs must not wait for reclaim to write pages
        // back through that same device (PR_SET_IO_FLUSHER, Linux 5.6; best effort, needs CAP_SYS_RESOURCE).
        Libc.Prctl(Libc.PR_SET_IO_FLUSHER, 1, 0, 0, 0);
        var stop = _stopping.Token;
        try
        {
            while (_requests.TryRent(stop, out var request))
            {
                var buffer = request.Buffer;
                int length = ReadRequest(buffer, stop);
                if (length <= 0)
                {
                    _requests.Return(request);
                    return;
                }
                bool handedOff = false;
                try { handedOff = Dispatch(request, length); }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException)
                {
                    // A request shorter than its opcode's arguments (MemoryMarshal.Read throws): answer, keep serving.
                    _logger.LogWarning("Malformed FUSE request: {Message}", e.Message);
                    ReplyError(buffer, MemoryMarshal.Read<FuseInHeader>(buffer).Unique, Libc.EINVAL);
                }
                if (!handedOff)
                    _requests.Return(request);
            }
        }
        catch (Exception e)
        {
            _logger.LogError(e, "FUSE reader stopped on an unexpected error");
            _initialized.TrySetException(e);
        }
        finally
        {
            if (Interlocked.Decrement(ref _runningReaders) == 0)
            {
                _initialized.TrySetException(new NbdFuseException("The FUSE connection ended before the kernel's INIT was answered."));
                _completion.TrySetResult();
            }
        }
    }

    /// <summary>
    /// One request into <paramref name="buffer"/>; 0 when the connection is gone (unmounted or aborted: ENODEV) or
    /// the server is stopping. The device is non-blocking and polled, so a stop never waits on a blocked read(2).
    /// </summary>
    private unsafe int ReadRequest(byte[] buffer, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            nint n;
            fixed (byte* p = buffer) n = Libc.Read(_device, p, (nuint)buffer.Length);
            if (n > 0) return (int)n;
            int errno = Libc.LastErrno;
            switch (errno)
            {
                case Libc.EAGAIN: WaitReadable(); continue;
                case Libc.EINTR: case Libc.ENOENT: continue; // ENOENT: the request was interrupted before we read it
                case Libc.ENODEV: return 0;
                default:
                    _logger.LogError("Reading /dev/fuse failed: {Error}", Libc.StrError(errno));
                    return 0;
            }
        }
        return 0;
    }

    private unsafe void WaitReadable()
    {
        bool added = false;
        try
        {
            _device.DangerousAddRef(ref added);
            var fd = new Libc.PollFd { Fd = (int)_device.DangerousGetHandle(), Events = Libc.POLLIN };
            Libc.Poll(&fd, 1, PollIntervalMs);
        }
        finally
        {
            if (added) _device.DangerousRelease();
        }
    }

    /// <summary>Answers a request. True when an asynchronous operation took the request (it returns it when done).</summary>
    private bool Dispatch(FuseRequest request, int length)
    {
        var buffer = request.Buffer;
        if (length < InHeaderSize) return false;
        var header = MemoryMarshal.Read<FuseInHeader>(buffer);
        var args = buffer.AsSpan(InHeaderSize, Math.Min(length, (int)header.Length) - InHeaderSize);
        if (header.Opcode != FuseOpcode.Init && !_initialized.Task.IsCompletedSuccessfully && header.Opcode != FuseOpcode.Destroy)
        {
            ReplyError(buffer, header.Unique, Libc.EIO);
            return false;
        }
        switch (header.Opcode)
        {
            case FuseOpcode.Init: Init(buffer, header, args); return false;
            case FuseOpcode.Lookup: Lookup(buffer, header, args); return false;
            case FuseOpcode.GetAttr: ReplyAttr(buffer, header.Unique, header.NodeId); return false;
            case FuseOpcode.SetAttr: SetAttr(buffer, header, args); return false;
            case FuseOpcode.Open: Open(buffer, header, args); return false;
            case FuseOpcode.Release: Release(buffer, header); return false;
            case FuseOpcode.OpenDir: OpenDir(buffer, header); return false;
            case FuseOpcode.ReadDir: ReadDir(buffer, header, args); return false;
            case FuseOpcode.ReleaseDir: ReplyEmpty(buffer, header.Unique); return false;
            case FuseOpcode.StatFs: StatFs(buffer, header.Unique); return false;
            case FuseOpcode.Access: ReplyEmpty(buffer, header.Unique); return false;
            case FuseOpcode.Forget: case FuseOpcode.BatchForget: case FuseOpcode.Interrupt: return false; // no reply
            case FuseOpcode.Destroy: ReplyEmpty(buffer, header.Unique); return false;
            case FuseOpcode.Read: return Read(request, header, args);
            case FuseOpcode.Write: return Write(request, header, args);
            case FuseOpcode.Fsync: case FuseOpcode.Flush: case FuseOpcode.SyncFs: return Flush(request, header);
            case FuseOpcode.Fallocate: return Fallocate(request, header, args);
            case FuseOpcode.MkNod: case FuseOpcode.MkDir: case FuseOpcode.Unlink: case FuseOpcode.RmDir: case FuseOpcode.Rename:
            case FuseOpcode.Rename2: case FuseOpcode.Link: case FuseOpcode.Symlink: case FuseOpcode.Create: case FuseOpcode.TmpFile:
                ReplyError(buffer, header.Unique, _options.ReadOnly ? Libc.EROFS : Libc.EPERM);
                return false;
            default:
                // xattrs, locks, ioctl, poll, lseek, bmap, copy_file_range...: ENOSYS makes the kernel stop asking
                // (or fall back to its generic code).
                ReplyError(buffer, header.Unique, Libc.ENOSYS);
                return false;
        }
    }

    private void Init(byte[] buffer, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        var init = args.Length >= Unsafe.SizeOf<FuseInitIn>()
            ? MemoryMarshal.Read<FuseInitIn>(args)
            : new FuseInitIn { Major = args.Length >= 8 ? MemoryMarshal.Read<uint>(args) : 0, Minor = args.Length >= 8 ? MemoryMarshal.Read<uint>(args[4..]) : 0 };
        if (init.Major != ProtocolMajor || init.Minor < OldestKernelMinor)
        {
            var error = new NbdFuseException($"The kernel speaks FUSE protocol {init.Major}.{init.Minor}; this server needs 7.{OldestKernelMinor} or later (Linux 3.15+).");
            ReplyError(buffer, header.Unique, Libc.EPROTO);
            _initialized.TrySetException(error);
            return;
        }
        ulong offered = init.Flags | ((init.Flags & (uint)FuseInitFlags.InitExt) != 0 ? (ulong)init.Flags2 << 32 : 0);
        var granted = (FuseInitFlags)offered & WantedFlags;
        // Without FUSE_MAX_PAGES (before 7.28) the kernel splits requests at 32 pages whatever we say.
        int maxPages = granted.HasFlag(FuseInitFlags.MaxPages) ? _options.MaxRequestBytes / Environment.SystemPageSize : 32;
        var reply = new FuseInitOut
        {
            Major = ProtocolMajor,
            Minor = Math.Min(ProtocolMinor, init.Minor),
            MaxReadahead = init.MaxReadahead,
            Flags = (uint)granted,
            // Async direct I/O (the loop device's path) is sent as background requests, which max_background
            // caps; it is the kernel-side bound on our requests in flight, matched to the buffer pool.
            MaxBackground = (ushort)_options.MaxInFlight,
            CongestionThreshold = (ushort)(_options.MaxInFlight * 3 / 4),
            MaxWrite = (uint)_options.MaxRequestBytes,
            TimeGranularity = 1,
            MaxPages = (ushort)maxPages,
        };
        NegotiatedFlags = granted;
        NegotiatedMinor = reply.Minor;
        Reply(buffer, header.Unique, in reply);
        _logger.LogDebug("FUSE INIT: kernel {Major}.{Minor}, granted {Flags}, max_write {MaxWrite}, max_pages {MaxPages}", init.Major, init.Minor, granted, reply.MaxWrite, maxPages);
        _initialized.TrySetResult();
    }

    /// <summary>What INIT settled (for diagnostics and tests).</summary>
    public FuseInitFlags NegotiatedFlags { get; private set; }
    public uint NegotiatedMinor { get; private set; }

    private void Lookup(byte[] buffer, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        int nul = args.IndexOf((byte)0);
        var name = nul >= 0 ? args[..nul] : args;
        if (header.NodeId != RootNode || !name.SequenceEqual("disk"u8))
        {
            ReplyError(buffer, header.Unique, Libc.ENOENT);
            return;
        }
        var entry = new FuseEntryOut { NodeId = DiskNode, EntryValid = CacheSeconds, AttrValid = CacheSeconds, Attr = AttrOf(DiskNode) };
        Reply(buffer, header.Unique, in entry);
    }

    private void ReplyAttr(byte[] buffer, ulong unique, ulong node)
    {
        if (node is not (RootNode or DiskNode))
        {
            ReplyError(buffer, unique, Libc.ENOENT);
            return;
        }
        var attr = new FuseAttrOut { AttrValid = CacheSeconds, Attr = AttrOf(node) };
        Reply(buffer, unique, in attr);
    }

    private FuseAttr AttrOf(ulong node)
    {
        ulong seconds = (ulong)_mountTime.ToUnixTimeSeconds();
        var attr = new FuseAttr
        {
            Ino = node,
            ATime = seconds, MTime = seconds, CTime = seconds,
            Uid = _options.Uid, Gid = _options.Gid,
            BlockSize = (uint)_options.BlockSize,
        };
        if (node == RootNode)
        {
            attr.Mode = S_IFDIR | 0x140; // 0500: nothing can be created here
            attr.NLink = 2;
        }
        else
        {
            attr.Mode = S_IFREG | (_options.ReadOnly ? 0x100u : 0x180u); // 0400 or 0600
            attr.NLink = 1;
            attr.Size = (ulong)_io.Size;
            attr.Blocks = ((ulong)_io.Size + 511) / 512;
        }
        return attr;
    }

    private void SetAttr(byte[] buffer, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        if (args.Length < Unsafe.SizeOf<FuseSetAttrIn>())
        {
            ReplyError(buffer, header.Unique, Libc.EINVAL);
            return;
        }
        var set = MemoryMarshal.Read<FuseSetAttrIn>(args);
        // Times are accepted and forgotten (the kernel updates mtime on writes); the size and the owner of a disk
        // cannot change.
        var refused = FuseSetAttrValid.Mode | FuseSetAttrValid.Uid | FuseSetAttrValid.Gid;
        if ((set.Valid & refused) != 0 || (set.Valid.HasFlag(FuseSetAttrValid.Size) && set.Size != (ulong)_io.Size))
        {
            ReplyError(buffer, header.Unique, Libc.EPERM);
            return;
        }
        ReplyAttr(buffer, header.Unique, header.NodeId);
    }

    private void Open(byte[] buffer, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        if (header.NodeId != DiskNode)
        {
            ReplyError(buffer, header.Unique, header.NodeId == RootNode ? Libc.EISDIR : Libc.ENOENT);
            return;
        }
        var open = args.Length >= Unsafe.SizeOf<FuseOpenIn>() ? MemoryMarshal.Read<FuseOpenIn>(args) : default;
        if (_options.ReadOnly && (open.Flags & O_ACCMODE) != Libc.O_RDONLY)
        {
            ReplyError(buffer, header.Unique, Libc.EROFS);
            return;
        }
        Interlocked.Increment(ref _openHandles);
        var reply = new FuseOpenOut { Fh = (ulong)Interlocked.Increment(ref _nextHandle), OpenFlags = _options.OpenFlags };
        Reply(buffer, header.Unique, in reply);
    }

    private void Release(byte[] buffer, in FuseInHeader header)
    {
        if (header.NodeId == DiskNode) Interlocked.Decrement(ref _openHandles);
        ReplyEmpty(buffer, header.Unique);
    }

    private void OpenDir(byte[] buffer, in FuseInHeader header)
    {
        if (header.NodeId != RootNode)
        {
            ReplyError(buffer, header.Unique, header.NodeId == DiskNode ? Libc.ENOTDIR : Libc.ENOENT);
            return;
        }
        var reply = new FuseOpenOut { Fh = 0, OpenFlags = FuseOpenFlags.KeepCache | FuseOpenFlags.CacheDir };
        Reply(buffer, header.Unique, in reply);
    }

    private void ReadDir(byte[] buffer, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        var read = MemoryMarshal.Read<FuseReadIn>(args);
        ulong unique = header.Unique;
        int limit = (int)Math.Min(read.Size, (uint)(buffer.Length - OutHeaderSize));
        var output = buffer.AsSpan(OutHeaderSize, limit);
        int used = 0;
        ReadOnlySpan<(ulong Ino, uint Type, string Name)> entries = [(RootNode, DT_DIR, "."), (RootNode, DT_DIR, ".."), (DiskNode, DT_REG, DiskFileName)];
        for (int i = (int)Math.Min(read.Offset, (ulong)entries.Length); i < entries.Length; i++)
        {
            int nameLength = entries[i].Name.Length;
            int record = (Unsafe.SizeOf<FuseDirent>() + nameLength + 7) & ~7;
            if (used + record > output.Length) break;
            var dirent = new FuseDirent { Ino = entries[i].Ino, Offset = (ulong)(i + 1), NameLength = (uint)nameLength, Type = entries[i].Type };
            MemoryMarshal.Write(output[used..], in dirent);
            var name = output.Slice(used + Unsafe.SizeOf<FuseDirent>(), record - Unsafe.SizeOf<FuseDirent>());
            name.Clear();
            System.Text.Encoding.ASCII.GetBytes(entries[i].Name, name);
            used += record;
        }
        Send(buffer, unique, 0, used);
    }

    private void StatFs(byte[] buffer, ulong unique)
    {
        // The loop driver takes its discard granularity from f_bsize.
        uint bsize = (uint)_options.BlockSize;
        var reply = new FuseStatFsOut
        {
            Blocks = (ulong)_io.Size / bsize, Files = 1, BlockSize = bsize, NameLength = 255, FragmentSize = bsize,
        };
        Reply(buffer, unique, in reply);
    }

    private bool Read(FuseRequest request, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        var buffer = request.Buffer;
        var read = MemoryMarshal.Read<FuseReadIn>(args);
        long size = _io.Size;
        long offset = (long)Math.Min(read.Offset, (ulong)size);
        int count = (int)Math.Min(read.Size, (ulong)(size - offset)); // past the end: a short read, as for any file
        if (count == 0 || header.NodeId != DiskNode)
        {
            Send(buffer, header.Unique, header.NodeId == DiskNode ? 0 : -Libc.EBADF, 0);
            return false;
        }
        // Requests never exceed max_read (a mount option equal to the buffer's payload room); the guard keeps a
        // misbehaving kernel from overrunning the buffer.
        byte[] target = count <= buffer.Length - OutHeaderSize ? buffer : GC.AllocateUninitializedArray<byte>(OutHeaderSize + count, pinned: true);
        Begin(request, header.Unique, offset, count, target);
        request.ContinueWith(Start(static (io, r, ct) => io.ReadAsync(r.Offset, r.Target.AsMemory(OutHeaderSize, (int)r.Length), ct), request), _readDone);
        return true;
    }

    private void ReadDone(FuseRequest request, Exception? failure)
    {
        int count = (int)request.Length;
        int error = 0;
        if (failure is null)
        {
            Interlocked.Increment(ref _counters.Reads);
            Interlocked.Add(ref _counters.BytesRead, count);
        }
        else error = Failed(failure, "READ", request.Offset, count);
        Finish(request, request.Target, error, count);
    }

    private bool Write(FuseRequest request, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        var write = MemoryMarshal.Read<FuseWriteIn>(args);
        long size = _io.Size;
        int error = _options.ReadOnly ? Libc.EROFS : header.NodeId != DiskNode ? Libc.EBADF : write.Offset >= (ulong)size ? Libc.ENOSPC : 0;
        if (error != 0)
        {
            Interlocked.Increment(ref _counters.Errors);
            ReplyError(request.Buffer, header.Unique, error);
            return false;
        }
        long offset = (long)write.Offset;
        int count = (int)Math.Min(write.Size, (ulong)(size - offset)); // a write past the end is cut short
        Begin(request, header.Unique, offset, count);
        request.ContinueWith(Start(static (io, r, ct) => io.WriteAsync(r.Offset, r.Buffer.AsMemory(InHeaderSize + WriteInSize, (int)r.Length), ct), request), _writeDone);
        return true;
    }

    private void WriteDone(FuseRequest request, Exception? failure)
    {
        int count = (int)request.Length;
        int error = 0;
        if (failure is null)
        {
            Interlocked.Increment(ref _counters.Writes);
            Interlocked.Add(ref _counters.BytesWritten, count);
            MemoryMarshal.Write(request.Buffer.AsSpan(OutHeaderSize), new FuseWriteOut { Size = (uint)count });
        }
        else error = Failed(failure, "WRITE", request.Offset, count);
        Finish(request, request.Buffer, error, Unsafe.SizeOf<FuseWriteOut>());
    }

    private bool Flush(FuseRequest request, in FuseInHeader header)
    {
        if (_options.ReadOnly)
        {
            ReplyEmpty(request.Buffer, header.Unique);
            return false;
        }
        Begin(request, header.Unique, 0, 0);
        request.ContinueWith(Start(static (io, _, ct) => io.FlushAsync(ct), request), _flushDone);
        return true;
    }

    private void FlushDone(FuseRequest request, Exception? failure)
    {
        int error = 0;
        if (failure is null) Interlocked.Increment(ref _counters.Flushes);
        else error = Failed(failure, "FLUSH", 0, 0);
        Finish(request, request.Buffer, error, 0);
    }

    /// <summary>
    /// The loop driver turns discards and zero-outs into fallocate: PUNCH_HOLE (discard, or zeroing that may
    /// deallocate) and ZERO_RANGE (zeroing that keeps the space). Both promise that the range then reads as zeroes,
    /// which NBD_CMD_TRIM does not (servers may ignore a trim, e.g. qemu-nbd's default --discard=ignore, and ext4's
    /// lazy inode-table zeroing relies on it), so both become NBD_CMD_WRITE_ZEROES: without NO_HOLE for a punch, so
    /// the server may free the space, with NO_HOLE for ZERO_RANGE. A server without WRITE_ZEROES gets EOPNOTSUPP,
    /// on which the loop driver turns its discard off and the block layer zeroes by writing.
    /// </summary>
    private bool Fallocate(FuseRequest request, in FuseInHeader header, ReadOnlySpan<byte> args)
    {
        var buffer = request.Buffer;
        var fallocate = MemoryMarshal.Read<FuseFallocateIn>(args);
        var mode = fallocate.Mode & ~FallocateMode.KeepSize;
        bool punch = mode == FallocateMode.PunchHole;
        bool zero = mode is FallocateMode.ZeroRange or FallocateMode.WriteZeroes;
        long size = _io.Size;
        int error = _options.ReadOnly ? Libc.EROFS
            : header.NodeId != DiskNode ? Libc.EBADF
            : !(punch || zero) || !_canZero ? Libc.EOPNOTSUPP
            : !fallocate.Mode.HasFlag(FallocateMode.KeepSize) && fallocate.Offset + fallocate.Length > (ulong)size ? Libc.EFBIG
            : 0;
        if (error != 0)
        {
            ReplyError(buffer, header.Unique, error);
            return false;
        }
        long offset = (long)Math.Min(fallocate.Offset, (ulong)size);
        long length = (long)Math.Min(fallocate.Length, (ulong)(size - offset));
        if (length == 0)
        {
            ReplyEmpty(buffer, header.Unique);
            return false;
        }
        Begin(request, header.Unique, offset, length, mayPunch: punch);
        request.ContinueWith(Start(static (io, r, ct) => io.WriteZeroesAsync(r.Offset, r.Length, r.MayPunch, ct), request), _zeroDone);
        return true;
    }

    private void ZeroDone(FuseRequest request, Exception? failure)
    {
        int error = 0;
        if (failure is null) Interlocked.Increment(ref _counters.Zeroes);
        else error = Failed(failure, "WRITE_ZEROES", request.Offset, request.Length);
        Finish(request, request.Buffer, error, 0);
    }

    private void Begin(FuseRequest request, ulong unique, long offset, long length, byte[]? target = null, bool mayPunch = false)
    {
        request.Describe(unique, offset, length, target, mayPunch);
        Interlocked.Increment(ref _pending);
        _counters.Enter();
    }

    /// <summary>Starts the NBD operation; one that throws instead of returning a failed task is answered the same way.</summary>
    private ValueTask Start(Func<INbdBlockIo, FuseRequest, CancellationToken, ValueTask> operation, FuseRequest request)
    {
        try { return operation(_io, request, _stopping.Token); }
        catch (Exception e) { return ValueTask.FromException(e); }
    }

    /// <summary>
    /// Answers a started request (errno <paramref name="error"/>, or the <paramref name="bodyLength"/>
    /// bytes already in <paramref name="reply"/> after the out header) and ends it. It leaves the
    /// in-flight count before the reply goes out: the reply wakes whoever waited for the I/O, and
    /// what they read of the statistics must not still count it. Its buffer returns to the pool after.
    /// </summary>
    private void Finish(FuseRequest request, byte[] reply, int error, int bodyLength)
    {
        _counters.Leave();
        Send(reply, request.Unique, -error, bodyLength);
        _requests.Return(request);
        Interlocked.Decrement(ref _pending);
    }

    /// <summary>The errno to answer for a failed NBD request; the failure is logged and counted.</summary>
    private int Failed(Exception e, string operation, long offset, long length)
    {
        Interlocked.Increment(ref _counters.Errors);
        int errno = e switch
        {
            NbdCommandException c when c.Error is NbdError.Perm or NbdError.IO or NbdError.NoMemory or NbdError.Invalid
                or NbdError.NoSpace or NbdError.Overflow or NbdError.NotSupported => (int)c.Error,
            NotSupportedException => Libc.EOPNOTSUPP,
            _ => Libc.EIO,
        };
        if (_stopping.IsCancellationRequested)
            _logger.LogDebug("{Operation} of {Length} bytes at {Offset} on {Uri} ended by the stop", operation, length, offset, _io.Uri);
        else
            _logger.LogWarning("{Operation} of {Length} bytes at {Offset} on {Uri} failed, answering {Errno}: {Message}", operation, length, offset, _io.Uri, Libc.StrError(errno), e.Message);
        return errno;
    }

    private void ReplyEmpty(byte[] buffer, ulong unique) => Send(buffer, unique, 0, 0);

    private void ReplyError(byte[] buffer, ulong unique, int errno) => Send(buffer, unique, -errno, 0);

    private void Reply<T>(byte[] buffer, ulong unique, in T body) where T : unmanaged
    {
        MemoryMarshal.Write(buffer.AsSpan(OutHeaderSize), in body);
        Send(buffer, unique, 0, Unsafe.SizeOf<T>());
    }

    /// <summary>Writes the out header in front of <paramref name="bodyLength"/> bytes already at offset 16 and sends both.</summary>
    private unsafe void Send(byte[] buffer, ulong unique, int error, int bodyLength)
    {
        int total = OutHeaderSize + (error == 0 ? bodyLength : 0);
        var header = new FuseOutHeader { Length = (uint)total, Error = error, Unique = unique };
        MemoryMarshal.Write(buffer, in header);
        nint n;
        fixed (byte* p = buffer) n = Libc.Write(_device, p, (nuint)total);
        if (n < 0)
        {
            int errno = Libc.LastErrno;
            // ENOENT: the request was interrupted or aborted meanwhile; ENODEV: the connection is gone.
            if (errno is not (Libc.ENOENT or Libc.ENODEV))
                _logger.LogWarning("Answering FUSE request {Unique} failed: {Error}", unique, Libc.StrError(errno));
        }
    }

    /// <summary>
    /// Stops the readers and closes /dev/fuse, which aborts the connection if it is still mounted: whatever still
    /// uses the file then gets ENOTCONN. Requests in flight are cancelled. Idempotent.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stopping.Cancel();
        foreach (var thread in _readers)
            if (thread != Thread.CurrentThread) thread.Join(TimeSpan.FromSeconds(10));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (Interlocked.Read(ref _pending) > 0 && clock.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(10);
        _device.Dispose();
        _completion.TrySetResult();
    }
}
