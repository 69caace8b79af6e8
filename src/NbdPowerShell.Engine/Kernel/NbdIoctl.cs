using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>The legacy ioctl interface of /dev/nbdN (linux/nbd.h): each request is _IO(0xab, n).</summary>
internal static class NbdIoctl
{
    public const uint SET_SOCK = 0xAB00;
    public const uint SET_BLKSIZE = 0xAB01;
    public const uint SET_SIZE = 0xAB02;
    public const uint DO_IT = 0xAB03;
    public const uint CLEAR_SOCK = 0xAB04;
    public const uint CLEAR_QUE = 0xAB05;
    public const uint SET_SIZE_BLOCKS = 0xAB07;
    public const uint DISCONNECT = 0xAB08;
    public const uint SET_TIMEOUT = 0xAB09;
    public const uint SET_FLAGS = 0xAB0A;

    /// <summary>Opens /dev/nbdN read-write; maps the usual failures to typed exceptions.</summary>
    public static int OpenDevice(string devicePath, int index)
    {
        int fd = Libc.Open(devicePath, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (fd >= 0) return fd;
        int errno = Libc.LastErrno;
        throw errno switch
        {
            Libc.ENOENT or Libc.ENODEV => new NbdDeviceNotFoundException(index, $"{devicePath} does not exist.", errno),
            Libc.EPERM or Libc.EACCES => new NbdPermissionDeniedException($"Cannot open {devicePath}: {Libc.StrError(errno)}; attaching NBD devices must run as root.", errno),
            Libc.EBUSY => new NbdDeviceBusyException(index, $"{devicePath} is busy.", errno),
            _ => new NbdKernelException($"Cannot open {devicePath}: {Libc.StrError(errno)}.", errno),
        };
    }

    /// <summary>Issues one ioctl; throws with the ioctl's name on failure.</summary>
    public static void Call(int fd, uint request, nuint arg, string name, int index)
    {
        if (Libc.Ioctl(fd, request, arg) >= 0) return;
        int errno = Libc.LastErrno;
        throw errno switch
        {
            Libc.EPERM or Libc.EACCES => new NbdPermissionDeniedException($"{name} on /dev/nbd{index} was refused: must run as root (CAP_SYS_ADMIN).", errno),
            Libc.EBUSY => new NbdDeviceBusyException(index, $"{name} on /dev/nbd{index} failed: the device is busy (already connected or being set up by another task).", errno),
            Libc.EINVAL => new NbdKernelException($"{name} on /dev/nbd{index} failed: {Libc.StrError(errno)} (a netlink-controlled device only accepts DISCONNECT and CLEAR_SOCK; or a bad parameter).", errno),
            _ => new NbdKernelException($"{name} on /dev/nbd{index} failed: {Libc.StrError(errno)}.", errno),
        };
    }

    /// <summary>BLKROSET takes a pointer to an int.</summary>
    public static unsafe void SetReadOnly(int fd, bool readOnly, int index)
    {
        int value = readOnly ? 1 : 0;
        Call(fd, Libc.BLKROSET, (nuint)(&value), "BLKROSET", index);
    }
}
