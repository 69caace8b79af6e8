using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace NbdPowerShell.Engine.Interop;

/// <summary>
/// File and block-device syscalls for the storage layer. Numbers were checked against
/// &lt;fcntl.h&gt;, &lt;linux/fs.h&gt;, &lt;linux/falloc.h&gt; and &lt;sys/stat.h&gt; with gcc on x86_64;
/// the generic (asm-generic) values are the same on arm64. 64-bit processes only: off_t is
/// passed as long, which matches the plain (non-"64") symbols only where off_t is 64 bits.
/// SafeFileHandle parameters make the marshaller AddRef/Release the handle, so a store that
/// is disposed mid-call cannot have its descriptor number reused under a running request.
/// </summary>
internal static partial class Libc
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EACCES = 13;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENOTTY = 25;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int EOPNOTSUPP = 95; // Same value as ENOTSUP on Linux.

    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;       // 0100
    public const int O_EXCL = 0x80;        // 0200
    public const int O_NOCTTY = 0x100;     // 0400
    public const int O_CLOEXEC = 0x80000;  // 02000000
    public const int O_TMPFILE = 0x410000; // 020200000 (includes O_DIRECTORY)

    public const int SEEK_DATA = 3;
    public const int SEEK_HOLE = 4;

    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    public const int RWF_DSYNC = 0x02;
    /// <summary>Fail with EAGAIN instead of waiting (for a buffered read: for pages not in the page cache).</summary>
    public const int RWF_NOWAIT = 0x08;

    public const int POSIX_FADV_WILLNEED = 3;
    public const int POSIX_FADV_DONTNEED = 4;

    public const nuint BLKROGET = 0x125e;
    public const nuint BLKSSZGET = 0x1268;
    public const nuint BLKDISCARD = 0x1277;
    public const nuint BLKZEROOUT = 0x127f;
    public const nuint BLKGETSIZE64 = 0x80081272;

    public const int AT_EMPTY_PATH = 0x1000;
    public const uint STATX_TYPE = 0x1;
    public const uint STATX_MODE = 0x2;
    public const uint STATX_SIZE = 0x200;

    public const int S_IFMT = 0xF000;   // 0170000
    public const int S_IFDIR = 0x4000;  // 0040000
    public const int S_IFBLK = 0x6000;  // 0060000
    public const int S_IFREG = 0x8000;  // 0100000

    /// <summary>
    /// struct statx (256 bytes, same layout on every architecture, unlike struct stat).
    /// Only the fields the stores read are named; offsets checked with offsetof().
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    public struct Statx
    {
        [FieldOffset(0)] public uint Mask;
        [FieldOffset(4)] public uint BlockSize;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(40)] public ulong Size;
        [FieldOffset(128)] public uint RdevMajor;
        [FieldOffset(132)] public uint RdevMinor;
        [FieldOffset(136)] public uint DevMajor;
        [FieldOffset(140)] public uint DevMinor;
    }

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport(Lib, EntryPoint = "unlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Unlink(string path);

    /// <summary>pread on a raw descriptor: see FileBlockStore for why reads skip the SafeHandle.</summary>
    [LibraryImport(Lib, EntryPoint = "pread", SetLastError = true)]
    public static unsafe partial nint PRead(int fd, byte* buffer, nuint count, long offset);

    /// <summary>preadv2 on a raw descriptor (RWF_NOWAIT reads from the connection's reader).</summary>
    [LibraryImport(Lib, EntryPoint = "preadv2", SetLastError = true)]
    public static unsafe partial nint PReadV2(int fd, IoVec* iov, int iovcnt, long offset, int flags);

    [LibraryImport(Lib, EntryPoint = "pwrite", SetLastError = true)]
    public static unsafe partial nint PWrite(SafeFileHandle fd, byte* buffer, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwritev2", SetLastError = true)]
    public static unsafe partial nint PWriteV2(SafeFileHandle fd, IoVec* iov, int iovcnt, long offset, int flags);

    [LibraryImport(Lib, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(SafeFileHandle fd);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int FTruncate(SafeFileHandle fd, long length);

    [LibraryImport(Lib, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int FAllocate(SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport(Lib, EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(SafeFileHandle fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatxFd(SafeFileHandle dirfd, string path, int flags, uint mask, out Statx result);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlGetU64(SafeFileHandle fd, nuint request, out ulong value);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlGetInt(SafeFileHandle fd, nuint request, out int value);

    /// <summary>BLKDISCARD / BLKZEROOUT take uint64_t range[2] = { start, length }.</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int IoctlRange(SafeFileHandle fd, nuint request, ulong* range);

    /// <summary>Returns the error number directly instead of setting errno.</summary>
    [LibraryImport(Lib, EntryPoint = "posix_fadvise")]
    public static partial int PosixFAdvise(SafeFileHandle fd, long offset, long length, int advice);
}
