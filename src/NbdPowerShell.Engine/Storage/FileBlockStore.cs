using System.Globalization;
using Microsoft.Win32.SafeHandles;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A regular file or a block device, served with positional I/O (pread/pwrite) on one shared
/// descriptor: concurrent requests never contend on a file position and need no locks, and
/// every connection goes through the same page cache, so multi-connection is coherent.
/// Optional kernel features (pwritev2 RWF_DSYNC, fallocate modes, SEEK_DATA, discard ioctls)
/// are tried first and switched off for this store after the first "not supported".
/// Reads use the raw descriptor number, not the SafeHandle, whose reference count would be one
/// cache line that every connection writes on every read: disposing the store while calls still
/// run is the caller's error, and the server disposes a store only after its connections closed.
/// </summary>
public sealed class FileBlockStore : IBlockStore, IFileDescriptorStore, IPageCacheStore
{
    // Shared source of zeroes for the slow write-zeroes path; never written to.
    private static readonly byte[] s_zeroes = new byte[1 << 20];

    private readonly SafeFileHandle _fd;
    private readonly int _rawFd;
    private readonly bool _readOnly;
    private readonly bool _isBlockDevice;
    private readonly bool _hardwareZeroes;

    // Cleared after the first ENOSYS/EOPNOTSUPP/EINVAL so later calls go straight to the fallback.
    private volatile bool _pwritev2Works = true;
    private volatile bool _punchWorks = true;
    private volatile bool _zeroRangeWorks = true;
    private volatile bool _seekDataWorks;
    private volatile bool _discardWorks = true;
    private volatile bool _zeroOutWorks = true;
    // RWF_NOWAIT reads: cleared after the first "not supported" (tmpfs and overlayfs answer EOPNOTSUPP).
    private volatile bool _noWaitReadsWork = true;

    private FileBlockStore(SafeFileHandle fd, string description, long size, bool readOnly, bool isBlockDevice,
        int logicalSectorSize, bool hardwareZeroes, bool rotational)
    {
        _fd = fd;
        _rawFd = (int)fd.DangerousGetHandle();
        Description = description;
        Size = size;
        _readOnly = readOnly;
        _isBlockDevice = isBlockDevice;
        LogicalSectorSize = logicalSectorSize;
        _hardwareZeroes = hardwareZeroes;

        var caps = StoreCapabilities.Flush | StoreCapabilities.Fua | StoreCapabilities.Cache | StoreCapabilities.MultiConnCoherent;
        if (rotational)
            caps |= StoreCapabilities.Rotational;
        if (!isBlockDevice)
        {
            _seekDataWorks = ProbeSeekData();
            if (_seekDataWorks)
                caps |= StoreCapabilities.Extents;
        }
        if (!readOnly)
        {
            caps |= StoreCapabilities.Write | StoreCapabilities.Trim | StoreCapabilities.WriteZeroes;
            // Files: nearly every Linux file system can punch or zero ranges, and probing would
            // change the file's mtime just by opening it; where it cannot, fast zeroes get ENOTSUP.
            if (!isBlockDevice || hardwareZeroes)
                caps |= StoreCapabilities.FastZero;
        }
        Capabilities = caps;
    }

    public long Size { get; }

    public StoreCapabilities Capabilities { get; }

    public string Description { get; }

    public bool IsBlockDevice => _isBlockDevice;

    int IFileDescriptorStore.Descriptor => _rawFd;

    /// <summary>Logical sector size of a block device (the smallest unit it can write); 1 for files.</summary>
    public int LogicalSectorSize { get; }

    /// <summary>
    /// Opens an existing regular file or block device.
    /// </summary>
    /// <exception cref="FileNotFoundException">The path does not exist.</exception>
    /// <exception cref="UnauthorizedAccessException">Permission denied.</exception>
    /// <exception cref="StorageException">A directory, another kind of file, a read-only file system or device, or another errno.</exception>
    public static FileBlockStore Open(string path, bool readOnly)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string fullPath = Path.GetFullPath(path);
        int flags = (readOnly ? Libc.O_RDONLY : Libc.O_RDWR) | Libc.O_CLOEXEC | Libc.O_NOCTTY;
        int fd;
        do
            fd = Libc.Open(fullPath, flags, 0);
        while (fd < 0 && Libc.LastErrno == Libc.EINTR);
        if (fd < 0)
            throw OpenFailure(Libc.LastErrno, fullPath, readOnly);

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (Libc.StatxFd(handle, "", Libc.AT_EMPTY_PATH, Libc.STATX_TYPE | Libc.STATX_SIZE, out var st) != 0)
                throw StorageException.FromErrno(Libc.LastErrno, $"statx '{fullPath}'");

            switch (st.Mode & Libc.S_IFMT)
            {
                case Libc.S_IFREG:
                    return new FileBlockStore(handle, "file:" + fullPath, (long)st.Size, readOnly, isBlockDevice: false,
                        logicalSectorSize: 1, hardwareZeroes: false, rotational: false);
                case Libc.S_IFBLK:
                    return OpenBlockDevice(handle, fullPath, readOnly, st.RdevMajor, st.RdevMinor);
                case Libc.S_IFDIR:
                    throw new StorageException(Libc.EISDIR, $"'{fullPath}' is a directory, not a file or block device.");
                default:
                    throw new StorageException(Libc.EINVAL, $"'{fullPath}' is neither a regular file nor a block device.");
            }
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Creates a sparse scratch file of <paramref name="size"/> bytes in <paramref name="directory"/>
    /// that has no name (O_TMPFILE, or created and unlinked at once), so it disappears when the
    /// store is disposed or the process dies.
    /// </summary>
    public static FileBlockStore CreateTemporary(string directory, long size)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        string fullDir = Path.GetFullPath(directory);
        const int mode = 0x180; // 0600: scratch data may be a copy of a private disk.

        int fd = OpenRetrying(fullDir, Libc.O_TMPFILE | Libc.O_RDWR | Libc.O_CLOEXEC, mode);
        if (fd < 0)
        {
            int errno = Libc.LastErrno;
            if (errno is not (Libc.EOPNOTSUPP or Libc.EISDIR or Libc.EINVAL))
                throw OpenFailure(errno, fullDir, readOnly: false);
            // File system without O_TMPFILE: create a unique name and unlink it straight away.
            string name = Path.Combine(fullDir, $".nbd-scratch-{Guid.NewGuid():N}.tmp");
            fd = OpenRetrying(name, Libc.O_CREAT | Libc.O_EXCL | Libc.O_RDWR | Libc.O_CLOEXEC, mode);
            if (fd < 0)
                throw OpenFailure(Libc.LastErrno, name, readOnly: false);
            Libc.Unlink(name);
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (Libc.FTruncate(handle, size) != 0)
                throw StorageException.FromErrno(Libc.LastErrno, $"ftruncate scratch file in '{fullDir}'");
            return new FileBlockStore(handle, $"file:{fullDir}/(temporary)", size, readOnly: false, isBlockDevice: false,
                logicalSectorSize: 1, hardwareZeroes: false, rotational: false);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public unsafe void Read(long offset, Span<byte> destination)
    {
        // A read only of the handle's state, so it costs no shared write.
        ObjectDisposedException.ThrowIf(_fd.IsClosed, this);
        fixed (byte* start = destination)
        {
            int done = 0;
            while (done < destination.Length)
            {
                nint n = Libc.PRead(_rawFd, start + done, (nuint)(destination.Length - done), offset + done);
                if (n > 0)
                {
                    done += (int)n;
                }
                else if (n == 0)
                {
                    // End of file: a file shorter than its advertised size reads as zeroes.
                    destination[done..].Clear();
                    return;
                }
                else
                {
                    int errno = Libc.LastErrno;
                    if (errno != Libc.EINTR)
                        throw StorageException.FromErrno(errno, "pread");
                }
            }
        }
    }

    /// <summary>
    /// preadv2(RWF_NOWAIT): the kernel copies what the page cache holds and answers EAGAIN (or a
    /// short count, after which the next call answers EAGAIN) where it would have to wait for the
    /// device. Any failure returns false and leaves the real read, and its error, to the caller's
    /// blocking path.
    /// </summary>
    bool IPageCacheStore.TryReadCached(long offset, Span<byte> destination)
    {
        if (!_noWaitReadsWork || _fd.IsClosed)
            return false;
        try
        {
            return TryReadNoWait(offset, destination);
        }
        catch (EntryPointNotFoundException)
        {
            _noWaitReadsWork = false; // A C library without preadv2.
            return false;
        }
    }

    private unsafe bool TryReadNoWait(long offset, Span<byte> destination)
    {
        fixed (byte* start = destination)
        {
            int done = 0;
            while (done < destination.Length)
            {
                Libc.IoVec iov;
                iov.Base = (nint)(start + done);
                iov.Length = (nuint)(destination.Length - done);
                nint n = Libc.PReadV2(_rawFd, &iov, 1, offset + done, Libc.RWF_NOWAIT);
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }
                if (n == 0)
                {
                    destination[done..].Clear(); // end of file: zeroes, as in Read
                    return true;
                }
                int errno = Libc.LastErrno;
                if (errno == Libc.EINTR)
                    continue;
                if (IsUnsupported(errno))
                    _noWaitReadsWork = false;
                return false;
            }
        }
        return true;
    }

    public void Write(long offset, ReadOnlySpan<byte> source, bool fua)
    {
        ThrowIfReadOnly();
        if (fua && _pwritev2Works && TryWriteDsyncOrDisable(offset, source))
            return;
        WriteAll(offset, source);
        if (fua)
            Flush();
    }

    public void Flush()
    {
        while (Libc.FDataSync(_fd) != 0)
        {
            int errno = Libc.LastErrno;
            if (errno != Libc.EINTR)
                throw StorageException.FromErrno(errno, "fdatasync");
        }
    }

    public void Trim(long offset, long length, bool fua)
    {
        ThrowIfReadOnly();
        if (length > 0)
        {
            if (_isBlockDevice)
                DiscardBlockDevice(offset, length);
            else if (_punchWorks && !TryFAllocate(Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, offset, length))
                _punchWorks = false; // Trim is a hint: without hole punching it does nothing.
        }
        if (fua)
            Flush();
    }

    public void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua)
    {
        ThrowIfReadOnly();
        if (length > 0)
        {
            if (_isBlockDevice)
                ZeroBlockDevice(offset, length, mayPunch, fastOnly);
            else
                ZeroFile(offset, length, mayPunch, fastOnly);
        }
        if (fua)
            Flush();
    }

    public void Cache(long offset, long length) =>
        _ = Libc.PosixFAdvise(_fd, offset, length, Libc.POSIX_FADV_WILLNEED); // A hint: failure changes nothing.

    public void GetExtents(long offset, long length, List<Extent> extents, int maxExtents)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExtents);
        if (length <= 0)
            return;
        long end = offset + length;
        if (!_seekDataWorks)
        {
            extents.Add(new Extent(length, ExtentFlags.Data));
            return;
        }

        long pos = offset;
        int added = 0;
        while (pos < end && added < maxExtents)
        {
            long data = Libc.LSeek(_fd, pos, Libc.SEEK_DATA);
            if (data < 0)
            {
                int errno = Libc.LastErrno;
                if (errno == Libc.ENXIO)
                    data = end; // No data at or after pos: the rest of the file is a hole.
                else if (errno == Libc.EINTR)
                    continue;
                else if (IsUnsupported(errno))
                {
                    _seekDataWorks = false;
                    extents.Add(new Extent(end - pos, ExtentFlags.Data));
                    return;
                }
                else
                    throw StorageException.FromErrno(errno, "lseek SEEK_DATA");
            }

            if (data > pos)
            {
                long holeEnd = Math.Min(data, end);
                extents.Add(new Extent(holeEnd - pos, ExtentFlags.Hole | ExtentFlags.Zero));
                added++;
                pos = holeEnd;
                continue;
            }

            long hole = Libc.LSeek(_fd, pos, Libc.SEEK_HOLE);
            if (hole < 0)
            {
                int errno = Libc.LastErrno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno != Libc.ENXIO) // ENXIO: the file shrank under us; call the rest data.
                    throw StorageException.FromErrno(errno, "lseek SEEK_HOLE");
                hole = end;
            }
            long dataEnd = Math.Min(Math.Max(hole, pos + 1), end);
            extents.Add(new Extent(dataEnd - pos, ExtentFlags.Data));
            added++;
            pos = dataEnd;
        }
    }

    public void Dispose() => _fd.Dispose();

    private void ThrowIfReadOnly()
    {
        if (_readOnly)
            throw new StorageException(Libc.EROFS, $"{Description} is open read-only.");
    }

    private bool TryWriteDsyncOrDisable(long offset, ReadOnlySpan<byte> source)
    {
        try
        {
            return TryWriteDsync(offset, source);
        }
        catch (EntryPointNotFoundException)
        {
            _pwritev2Works = false; // A C library without pwritev2 (glibc < 2.26, older musl).
            return false;
        }
    }

    private unsafe bool TryWriteDsync(long offset, ReadOnlySpan<byte> source)
    {
        fixed (byte* start = source)
        {
            int done = 0;
            while (done < source.Length)
            {
                Libc.IoVec iov;
                iov.Base = (nint)(start + done);
                iov.Length = (nuint)(source.Length - done);
                nint n = Libc.PWriteV2(_fd, &iov, 1, offset + done, Libc.RWF_DSYNC);
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }
                int errno = n == 0 ? Libc.EIO : Libc.LastErrno;
                if (errno == Libc.EINTR)
                    continue;
                if (done == 0 && IsUnsupported(errno))
                {
                    // Old kernel or file system without per-write sync: pwrite + fdatasync instead.
                    _pwritev2Works = false;
                    return false;
                }
                throw StorageException.FromErrno(errno, "pwritev2");
            }
        }
        return true;
    }

    private unsafe void WriteAll(long offset, ReadOnlySpan<byte> source)
    {
        fixed (byte* start = source)
        {
            int done = 0;
            while (done < source.Length)
            {
                nint n = Libc.PWrite(_fd, start + done, (nuint)(source.Length - done), offset + done);
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }
                int errno = n == 0 ? Libc.EIO : Libc.LastErrno;
                if (errno != Libc.EINTR)
                    throw StorageException.FromErrno(errno, "pwrite");
            }
        }
    }

    private void WriteZeroBytes(long offset, long length)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, s_zeroes.Length);
            WriteAll(offset, s_zeroes.AsSpan(0, n));
            offset += n;
            length -= n;
        }
    }

    private void ZeroFile(long offset, long length, bool mayPunch, bool fastOnly)
    {
        const int punch = Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE;
        if (mayPunch && _punchWorks)
        {
            if (TryFAllocate(punch, offset, length))
                return;
            _punchWorks = false;
        }
        if (_zeroRangeWorks)
        {
            if (TryFAllocate(Libc.FALLOC_FL_ZERO_RANGE | Libc.FALLOC_FL_KEEP_SIZE, offset, length))
                return;
            _zeroRangeWorks = false;
        }
        // No ZERO_RANGE (tmpfs, for one): punch, then allocate again so the range stays allocated.
        if (!mayPunch && _punchWorks)
        {
            if (TryFAllocate(punch, offset, length))
            {
                if (TryFAllocate(Libc.FALLOC_FL_KEEP_SIZE, offset, length))
                    return;
                if (fastOnly)
                    return; // Zeroed, only left sparse; better than failing after the fact.
            }
            else
            {
                _punchWorks = false;
            }
        }
        if (fastOnly)
            throw new StorageException(Libc.ENOTSUP, $"{Description}: no fast way to write zeroes.");
        WriteZeroBytes(offset, length);
    }

    private void DiscardBlockDevice(long offset, long length)
    {
        // BLKDISCARD needs sector alignment; trim is a hint, so round inward.
        long start = AlignUp(offset, LogicalSectorSize);
        long end = AlignDown(offset + length, LogicalSectorSize);
        if (end > start && _discardWorks && !TryRangeIoctl(Libc.BLKDISCARD, start, end - start))
            _discardWorks = false;
    }

    private void ZeroBlockDevice(long offset, long length, bool mayPunch, bool fastOnly)
    {
        // Without write-zeroes offload the kernel would write zeroes itself: not fast.
        if (fastOnly && !_hardwareZeroes)
            throw new StorageException(Libc.ENOTSUP, $"{Description}: device has no write-zeroes offload.");

        long end = offset + length;
        long start = AlignUp(offset, LogicalSectorSize);
        long alignedEnd = AlignDown(end, LogicalSectorSize);
        if (alignedEnd <= start)
        {
            WriteZeroBytes(offset, length);
            return;
        }
        WriteZeroBytes(offset, start - offset);
        WriteZeroBytes(alignedEnd, end - alignedEnd);

        long middle = alignedEnd - start;
        // On a block device PUNCH_HOLE means "zero, may unmap, never fall back to writing".
        if (mayPunch && _punchWorks)
        {
            if (TryFAllocate(Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, start, middle))
                return;
            _punchWorks = false;
        }
        // BLKZEROOUT keeps the range provisioned and uses offload when the device has it.
        if (_zeroOutWorks)
        {
            if (TryRangeIoctl(Libc.BLKZEROOUT, start, middle))
                return;
            _zeroOutWorks = false;
        }
        WriteZeroBytes(start, middle);
    }

    /// <summary>True on success, false when the mode is unsupported; throws on real errors.</summary>
    private bool TryFAllocate(int mode, long offset, long length)
    {
        while (Libc.FAllocate(_fd, mode, offset, length) != 0)
        {
            int errno = Libc.LastErrno;
            if (errno == Libc.EINTR)
                continue;
            if (IsUnsupported(errno))
                return false;
            throw StorageException.FromErrno(errno, $"fallocate mode 0x{mode:x}");
        }
        return true;
    }

    private unsafe bool TryRangeIoctl(nuint request, long offset, long length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = (ulong)offset;
        range[1] = (ulong)length;
        while (Libc.IoctlRange(_fd, request, range) != 0)
        {
            int errno = Libc.LastErrno;
            if (errno == Libc.EINTR)
                continue;
            if (IsUnsupported(errno) || errno == Libc.ENOTTY)
                return false;
            throw StorageException.FromErrno(errno, $"ioctl 0x{request:x}");
        }
        return true;
    }

    private bool ProbeSeekData()
    {
        if (Libc.LSeek(_fd, 0, Libc.SEEK_DATA) >= 0)
            return true;
        return Libc.LastErrno == Libc.ENXIO; // ENXIO: no data at all, which still means it works.
    }

    private static FileBlockStore OpenBlockDevice(SafeFileHandle handle, string fullPath, bool readOnly, uint major, uint minor)
    {
        if (Libc.IoctlGetU64(handle, Libc.BLKGETSIZE64, out ulong size) != 0)
            throw StorageException.FromErrno(Libc.LastErrno, $"BLKGETSIZE64 '{fullPath}'");
        if (Libc.IoctlGetInt(handle, Libc.BLKSSZGET, out int sectorSize) != 0 || sectorSize <= 0)
            sectorSize = 512;
        if (!readOnly && Libc.IoctlGetInt(handle, Libc.BLKROGET, out int ro) == 0 && ro != 0)
            throw new StorageException(Libc.EROFS, $"Block device '{fullPath}' is read-only; open it read-only.");

        string? rotational = ReadQueueAttribute(major, minor, "rotational");
        string? writeZeroesMax = ReadQueueAttribute(major, minor, "write_zeroes_max_bytes");
        bool hardwareZeroes = long.TryParse(writeZeroesMax, NumberStyles.Integer, CultureInfo.InvariantCulture, out long wz) && wz > 0;
        return new FileBlockStore(handle, "device:" + fullPath, (long)size, readOnly, isBlockDevice: true,
            sectorSize, hardwareZeroes, rotational == "1");
    }

    /// <summary>Reads /sys/dev/block/MAJ:MIN/queue/NAME; partitions keep their queue in the parent disk.</summary>
    private static string? ReadQueueAttribute(uint major, uint minor, string name)
    {
        string dev = $"/sys/dev/block/{major}:{minor}";
        foreach (string candidate in new[] { $"{dev}/queue/{name}", $"{dev}/../queue/{name}" })
        {
            try
            {
                if (File.Exists(candidate))
                    return File.ReadAllText(candidate).Trim();
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return null;
    }

    private static int OpenRetrying(string path, int flags, int mode)
    {
        int fd;
        do
            fd = Libc.Open(path, flags, mode);
        while (fd < 0 && Libc.LastErrno == Libc.EINTR);
        return fd;
    }

    private static Exception OpenFailure(int errno, string path, bool readOnly) => errno switch
    {
        Libc.ENOENT => new FileNotFoundException($"'{path}' does not exist.", path),
        Libc.ENOTDIR => new DirectoryNotFoundException($"A component of '{path}' is not a directory."),
        Libc.EACCES or Libc.EPERM => new UnauthorizedAccessException(
            $"Permission denied opening '{path}' for {(readOnly ? "reading" : "reading and writing")}."),
        Libc.EISDIR => new StorageException(errno, $"'{path}' is a directory, not a file or block device."),
        Libc.EROFS => new StorageException(errno, $"'{path}' is on a read-only file system; open it read-only."),
        _ => new StorageException(errno, $"Cannot open '{path}': {Libc.StrError(errno)} (errno {errno})."),
    };

    private static bool IsUnsupported(int errno) => errno is Libc.EOPNOTSUPP or Libc.ENOSYS or Libc.EINVAL;

    private static long AlignUp(long value, int alignment) => (value + alignment - 1) / alignment * alignment;

    private static long AlignDown(long value, int alignment) => value / alignment * alignment;
}
