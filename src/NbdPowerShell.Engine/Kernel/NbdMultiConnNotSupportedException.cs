namespace NbdPowerShell.Engine.Kernel;

/// <summary>More than one connection was requested but the export does not advertise CAN_MULTI_CONN (the kernel would say EINVAL).</summary>
public sealed class NbdMultiConnNotSupportedException : NbdKernelException
{
    public override string ErrorId => "NbdMultiConnNotSupported";
    public NbdMultiConnNotSupportedException(string message) : base(message, 22) { }
}
