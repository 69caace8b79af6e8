using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace NbdPowerShell.Engine.Interop;

/// <summary>
/// libc calls for the FUSE attach path: mount(2)/umount2(2) of a FUSE file system, read/write on /dev/fuse,
/// loop-device ioctls with a struct argument, and prctl. Constants checked against &lt;sys/mount.h&gt;,
/// &lt;linux/loop.h&gt; and &lt;sys/prctl.h&gt; with gcc on x86_64 (the same values on arm64).
/// </summary>
internal static partial class Libc
{
    public const int ENOMEM = 12;
    public const int EFBIG = 27;
    public const int EPROTO = 71;
    public const int EOVERFLOW = 75;
    public const int ENOTCONN = 107;
    public const int ESHUTDOWN = 108;

    public const int O_DIRECT = 0x4000; // 040000 on x86_64 and arm64

    public const ulong MS_RDONLY = 1;
    public const ulong MS_NOSUID = 2;
    public const ulong MS_NODEV = 4;
    public const ulong MS_NOEXEC = 8;

    public const int MNT_FORCE = 1;
    public const int MNT_DETACH = 2;
    public const int UMOUNT_NOFOLLOW = 8;

    /// <summary>PR_SET_IO_FLUSHER (Linux 5.6): the calling thread is part of the I/O path and must not recurse into reclaim I/O.</summary>
    public const int PR_SET_IO_FLUSHER = 57;

    [LibraryImport(Lib, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string fileSystemType, ulong flags, string data);

    [LibraryImport(Lib, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static unsafe partial nint Read(SafeFileHandle fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static unsafe partial nint Write(SafeFileHandle fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "writev", SetLastError = true)]
    public static unsafe partial nint WriteV(SafeFileHandle fd, IoVec* iov, int iovcnt);

    /// <summary>ioctl whose argument is a pointer to a caller-owned struct (LOOP_CONFIGURE, LOOP_SET_STATUS64).</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int IoctlPointer(SafeFileHandle fd, nuint request, void* arg);

    /// <summary>ioctl whose argument is a plain integer (LOOP_SET_FD, LOOP_CLR_FD, LOOP_CTL_GET_FREE, LOOP_SET_DIRECT_IO).</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlValue(SafeFileHandle fd, nuint request, nuint arg);

    [LibraryImport(Lib, EntryPoint = "getegid")]
    public static partial uint GetEgid();

    /// <summary>access(2): used to probe a FUSE mount, which answers ENOTCONN once its server is gone.</summary>
    [LibraryImport(Lib, EntryPoint = "access", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Access(string path, int mode);

    [LibraryImport(Lib, EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    /// <summary>Opens <paramref name="path"/> as a SafeFileHandle, or returns null and the errno.</summary>
    public static SafeFileHandle? OpenHandle(string path, int flags, out int errno)
    {
        int fd = Open(path, flags | O_CLOEXEC, 0);
        errno = fd < 0 ? LastErrno : 0;
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }
}
