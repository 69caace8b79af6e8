using NbdPowerShell.Engine.Interop;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// A fact that needs the real nbd driver: skipped with a reason unless /sys/module/nbd exists and we are root.
/// The test runner runs these (Category=Kernel) inside a VM with NBD_KERNEL_TESTS=1.
/// </summary>
public sealed class KernelFactAttribute : FactAttribute
{
    public KernelFactAttribute()
    {
        if (!OperatingSystem.IsLinux()) Skip = "Kernel tests need Linux with the nbd module.";
        else if (!Directory.Exists("/sys/module/nbd")) Skip = "The nbd kernel module is not loaded (/sys/module/nbd missing); run inside tools' nbd VM or `modprobe nbd`.";
        else if (Libc.GetEuid() != 0) Skip = "Kernel tests must run as root (attaching NBD devices needs CAP_SYS_ADMIN).";
    }
}
