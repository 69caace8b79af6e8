using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>Checks made before touching the kernel, each failing with an actionable typed exception.</summary>
public static class KernelPreconditions
{
    private const int CAP_SYS_ADMIN = 21;
    private static int _modprobeTried;

    public static void EnsureLinux()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            throw new NbdPlatformNotSupportedException($"Attaching NBD devices needs the Linux nbd driver; this is {RuntimeInformation.OSDescription}.");
    }

    /// <summary>Root, or at least CAP_SYS_ADMIN (which is what the nbd driver checks).</summary>
    public static void EnsureAdmin()
    {
        EnsureLinux();
        if (IsAdmin()) return;
        throw new NbdPermissionDeniedException("Attaching or detaching NBD devices must run as root (CAP_SYS_ADMIN); run PowerShell with sudo.");
    }

    /// <summary>Root, or CAP_SYS_ADMIN in the effective set: what mounting, loop devices and the nbd driver check.</summary>
    internal static bool IsAdmin() => Libc.GetEuid() == 0 || HasCapSysAdmin();

    /// <summary>Loads nbd with modprobe once per process if /sys/module/nbd is missing.</summary>
    public static void EnsureModuleLoaded(string sysRoot = "/sys")
    {
        EnsureLinux();
        string module = Path.Combine(sysRoot, "module", "nbd");
        if (Directory.Exists(module)) return;
        if (Interlocked.Exchange(ref _modprobeTried, 1) == 0 && sysRoot == "/sys")
        {
            try
            {
                using var p = Process.Start(new ProcessStartInfo("modprobe", "nbd") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false });
                if (p is not null && !p.WaitForExit(15_000)) p.Kill();
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException) { }
            if (Directory.Exists(module)) return;
        }
        throw new NbdKernelModuleMissingException("The nbd kernel module is not loaded; load it with: modprobe nbd (in containers, on the host, and run the container with --privileged).");
    }

    private static bool HasCapSysAdmin()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("CapEff:", StringComparison.Ordinal)
                    && ulong.TryParse(line.AsSpan(7).Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong caps))
                    return (caps & (1UL << CAP_SYS_ADMIN)) != 0;
        }
        catch (IOException) { }
        return false;
    }
}
