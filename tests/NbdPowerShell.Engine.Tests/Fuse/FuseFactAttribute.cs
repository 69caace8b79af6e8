using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Kernel;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>
/// A fact that attaches through FUSE and a loop device on the host (no VM: the host has /dev/fuse and loop devices,
/// not the nbd driver). Skipped, with the reason in the test output, where root, /dev/fuse or the loop driver is missing.
/// </summary>
public sealed class FuseFactAttribute : FactAttribute
{
    public FuseFactAttribute()
    {
        try { FuseAttacher.EnsureAvailable(); }
        catch (NbdKernelException e) { Skip = $"SKIPPED, FUSE attach cannot run here: {e.Message}"; }
    }
}

/// <summary>FUSE tests bind loop devices and run mkfs/fio: one at a time, so a 2-core machine does not time them out.</summary>
[CollectionDefinition("Fuse", DisableParallelization = true)]
public sealed class FuseCollection { }
