using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>Attaching or detaching through FUSE and a loop device failed. Derives from the kernel errors so callers handle both paths alike.</summary>
public class NbdFuseException : NbdKernelException
{
    public override string ErrorId => "NbdFuseError";
    public NbdFuseException(string message, int? errno = null, Exception? inner = null) : base(message, errno, inner) { }
}

/// <summary>/dev/fuse is missing or the kernel has no fuse file system.</summary>
public sealed class NbdFuseUnavailableException : NbdFuseException
{
    public override string ErrorId => "NbdFuseUnavailable";
    public NbdFuseUnavailableException(string message, int? errno = null) : base(message, errno) { }
}

/// <summary>No loop driver (/dev/loop-control missing) or no free loop device.</summary>
public sealed class NbdLoopUnavailableException : NbdFuseException
{
    public override string ErrorId => "NbdLoopUnavailable";
    public NbdLoopUnavailableException(string message, int? errno = null) : base(message, errno) { }
}
