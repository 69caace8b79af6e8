using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>How Connect-NbdDevice gives the machine a block device (its -Driver).</summary>
public enum DeviceDriver
{
    /// <summary>The nbd driver where it is usable, otherwise FUSE and a loop device (with a warning).</summary>
    Auto,
    /// <summary>The kernel's nbd driver: /dev/nbdN.</summary>
    Nbd,
    /// <summary>A FUSE file served by the NbdPowerShell service, bound to /dev/loopN.</summary>
    Fuse,
}

/// <summary>Resolves <see cref="DeviceDriver.Auto"/> to a device kind, and says why when it falls back to FUSE.</summary>
public static class DeviceDriverChoice
{
    /// <summary>
    /// The device kind for <paramref name="requested"/>. Auto takes FUSE only when the nbd driver is missing (no
    /// module, and modprobe could not load it) and FUSE is usable; every other nbd problem (not root, a busy device,
    /// a server that refuses) is left to the nbd attach to report. <paramref name="fallback"/> then says why FUSE was
    /// chosen and what differs. Fuse throws the reason FUSE is not usable here. With an nbd device asked for (<paramref name="nbdDeviceRequested"/>), Auto means Nbd.
    /// </summary>
    public static string Choose(DeviceDriver requested, bool nbdDeviceRequested, out string? fallback, Func<Exception?>? probeNbd = null, Func<Exception?>? probeFuse = null)
    {
        fallback = null;
        switch (requested)
        {
            case DeviceDriver.Nbd:
                return KernelDeviceKind.KindName;
            case DeviceDriver.Fuse:
                // Checked here too, so a machine without FUSE gets the reason before a service is started for nothing.
                if ((probeFuse ?? ProbeFuse)() is { } unusable)
                    throw unusable;
                return FuseDeviceKind.KindName;
        }
        if (nbdDeviceRequested)
            return KernelDeviceKind.KindName;
        if ((probeNbd ?? ProbeNbd)() is not NbdKernelModuleMissingException missing)
            return KernelDeviceKind.KindName;
        if ((probeFuse ?? ProbeFuse)() is { } fuseProblem)
        {
            // Neither works: report the nbd driver's absence, which is what the user most likely wants fixed, and FUSE's reason too.
            throw new NbdKernelModuleMissingException($"{missing.Message} Attaching through FUSE instead is not possible either: {fuseProblem.Message}", fuseProblem);
        }
        fallback = "The nbd kernel driver is not available here (no nbd module, and it could not be loaded), so the export is attached through FUSE and a loop device instead: "
            + "the device is /dev/loopN rather than /dev/nbdN, the NbdPowerShell service serves it (I/O fails while the service is down; a service crash loses the device, and its next start cleans up), "
            + "and every request passes through user space, so it is slower than the nbd driver. Use -Driver Fuse to choose this without the warning, or -Driver Nbd to insist on the nbd driver.";
        return FuseDeviceKind.KindName;
    }

    private static Exception? ProbeNbd() => Probe(() => KernelPreconditions.EnsureModuleLoaded());

    private static Exception? ProbeFuse() => Probe(FuseAttacher.EnsureAvailable);

    /// <summary>The reason a precondition check gives, or null when it passes.</summary>
    private static Exception? Probe(Action check)
    {
        try
        {
            check();
            return null;
        }
        catch (NbdKernelException e)
        {
            return e;
        }
    }
}
