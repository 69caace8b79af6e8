using System.Management.Automation;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell;

/// <summary>
/// Module import and removal. Removal (Remove-Module, or pwsh exiting) stops every export this process
/// serves. The warnings about kernel devices still attached to them are kept so that the script module's
/// OnRemove handler (NbdPowerShell.psm1) can write them with Write-Warning on the pipeline thread.
/// </summary>
public sealed class ModuleLifetime : IModuleAssemblyInitializer, IModuleAssemblyCleanup
{
    private static IReadOnlyList<string> _lastWarnings = [];
    private static int _exitHooked;

    public void OnImport()
    {
        if (Interlocked.Exchange(ref _exitHooked, 1) == 0)
            AppDomain.CurrentDomain.ProcessExit += (_, _) => StopExports();
        // Last line of defence: an exception escaping a server task must not take pwsh down. Observe it and log.
        TaskScheduler.UnobservedTaskException += OnUnobservedTaskException;
    }

    public void OnRemove(PSModuleInfo psModuleInfo)
    {
        TaskScheduler.UnobservedTaskException -= OnUnobservedTaskException;
        StopExports();
    }

    /// <summary>Stops every export (idempotent); returns warnings about kernel devices still attached to them.</summary>
    public static string[] StopExports()
    {
        try
        {
            var warnings = Hosts.Process.Shutdown(ListDevices).ToList();
            foreach (int index in TlsRelayRegistry.StopAll())
                warnings.Add($"/dev/nbd{index} reached its server over TLS through a relay in this process, which stopped with the module: its I/O fails now. Unmount it and run Disconnect-NbdDevice -Device /dev/nbd{index} -Force.");
            if (warnings.Count > 0)
                _lastWarnings = warnings;
            return warnings.ToArray();
        }
        catch (Exception e)
        {
            EngineLog.Default.Enqueue(LogLevel.Warning, "Stopping the exports failed: " + e.Message);
            return [];
        }
    }

    /// <summary>Takes (and clears) the warnings of the last stop.</summary>
    public static string[] TakeWarnings()
    {
        var w = _lastWarnings.ToArray();
        _lastWarnings = [];
        return w;
    }

    private static IReadOnlyList<(int, string, string?, bool)> ListDevices()
    {
        if (!OperatingSystem.IsLinux())
            return [];
        return new NbdDeviceDiscovery().GetDevices().Select(d => (d.Index, d.Device, d.BackendIdentifier, d.IsConnected)).ToList();
    }

    private static void OnUnobservedTaskException(object? sender, UnobservedTaskExceptionEventArgs e)
    {
        e.SetObserved();
        if (e.Exception.InnerExceptions.All(x => x is OperationCanceledException))
            return;
        EngineLog.Default.Enqueue(LogLevel.Warning, "A background NBD task failed: " + e.Exception.GetBaseException().Message);
    }
}
