using System.Runtime.InteropServices;

namespace NbdPowerShell.Engine.Interop;

/// <summary>libc calls used to attach block devices: open/ioctl on /dev/nbdN, identity checks, fd flags.</summary>
internal static partial class Libc
{
    public const int EBUSY = 16;
    public const int ENOSPC = 28;

    public const int F_GETFL = 3;
    public const int F_SETFL = 4;
    /// <summary>Duplicates a descriptor with close-on-exec set, so children (dd, servers) never inherit it.</summary>
    public const int F_DUPFD_CLOEXEC = 1030;
    public const int O_NONBLOCK = 0x800;

    /// <summary>_IO(0x12, 93): set a block device read-only (int* argument).</summary>
    public const uint BLKROSET = 0x125D;

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "dup", SetLastError = true)]
    public static partial int Dup(int fd);

    /// <summary>ioctl with an integer argument (the nbd ioctls take the value itself, BLKROSET a pointer).</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, nuint arg);

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport(Lib, EntryPoint = "geteuid")]
    public static partial uint GetEuid();
}
