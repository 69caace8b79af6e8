using System.Management.Automation;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell;

/// <summary>
/// Module import, and its end: <see cref="Remove"/> runs once the module goes away, from the script module's OnRemove
/// (Remove-Module, which writes the warnings on the pipeline thread) or at process exit (pwsh exiting without removing
/// modules). It stops every export this process serves and lets go of the devices it owns; the service is not touched.
/// </summary>
public sealed class ModuleLifetime : IModuleAssemblyInitializer
{
    private static int _hooked;

    public void OnImport()
    {
        if (Interlocked.Exchange(ref _hooked, 1) != 0)
            return;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Remove();
        // Last line of defence: an exception escaping a server task must not take pwsh down. Observe it and log.
        TaskScheduler.UnobservedTaskException += OnUnobservedTaskException;
    }

    /// <summary>Stops every export of this process (idempotent); returns warnings about kernel devices that depended on them.</summary>
    public static string[] Remove()
    {
        try
        {
            return Hosts.Process.Shutdown(ListDevices).ToArray();
        }
        catch (Exception e)
        {
            EngineLog.Default.Enqueue(LogLevel.Warning, "Stopping the exports failed: " + e.Message);
            return [];
        }
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
