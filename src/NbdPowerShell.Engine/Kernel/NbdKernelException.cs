namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// Base of kernel attach/detach errors. <see cref="ErrorId"/> is the id the cmdlets report;
/// <see cref="Errno"/> is set when a syscall or the kernel gave one.
/// </summary>
public class NbdKernelException : Exception
{
    public virtual string ErrorId => "NbdKernelError";
    public int? Errno { get; }
    public NbdKernelException(string message, int? errno = null, Exception? inner = null) : base(message, inner) => Errno = errno;
}

/// <summary>/sys/module/nbd is missing and modprobe did not help.</summary>
public sealed class NbdKernelModuleMissingException : NbdKernelException
{
    public override string ErrorId => "NbdKernelModuleMissing";
    public NbdKernelModuleMissingException(string message, Exception? inner = null) : base(message, null, inner) { }
}

/// <summary>Not root / no CAP_SYS_ADMIN (EPERM or EACCES from the kernel).</summary>
public sealed class NbdPermissionDeniedException : NbdKernelException
{
    public override string ErrorId => "NbdPermissionDenied";
    public NbdPermissionDeniedException(string message, int? errno = null, Exception? inner = null) : base(message, errno, inner) { }
}

/// <summary>The device is already connected or being set up by someone else (EBUSY).</summary>
public sealed class NbdDeviceBusyException : NbdKernelException
{
    public override string ErrorId => "NbdDeviceBusy";
    public int Index { get; }
    public NbdDeviceBusyException(int index, string message, int? errno = null, Exception? inner = null) : base(message, errno, inner) => Index = index;
}

/// <summary>No /dev/nbdN or /sys/block/nbdN for the requested index.</summary>
public sealed class NbdDeviceNotFoundException : NbdKernelException
{
    public override string ErrorId => "NbdDeviceNotFound";
    public int Index { get; }
    public NbdDeviceNotFoundException(int index, string message, int? errno = null) : base(message, errno) => Index = index;
}

/// <summary>Disconnect refused: the device or a partition is mounted or held (LVM, dm, md) and force was not given.</summary>
public sealed class NbdDeviceMountedException : NbdKernelException
{
    public override string ErrorId => "NbdDeviceMounted";
    public int Index { get; }
    public IReadOnlyList<string> MountPoints { get; }
    public IReadOnlyList<string> Holders { get; }
    public NbdDeviceMountedException(int index, IReadOnlyList<string> mountPoints, IReadOnlyList<string> holders, string message) : base(message)
    {
        Index = index;
        MountPoints = mountPoints;
        Holders = holders;
    }
}

/// <summary>Kernel attach only exists on Linux.</summary>
public sealed class NbdPlatformNotSupportedException : NbdKernelException
{
    public override string ErrorId => "NbdPlatformNotSupported";
    public NbdPlatformNotSupportedException(string message) : base(message) { }
}
