using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Service.Messages;

namespace NbdPowerShell;

// What the cmdlets ask of the two hosts: the service started on demand, and listings that merge this process,
// the service and the kernel.
public abstract partial class NbdCmdlet
{
    private bool _warnedAboutService;

    /// <summary>How long an on-demand start may take (pwsh and the module load in the new process; slow on emulated machines).</summary>
    private static readonly TimeSpan ServiceStartTimeout = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The service, started when it is not running: by systemd when its unit is installed and systemd runs, otherwise
    /// on demand, detached from this session. Throws ServiceUnavailable (with its log) when it does not come up.
    /// </summary>
    internal ServiceClient StartService()
    {
        var client = Hosts.Service;
        try
        {
            Wait(client.HelloAsync(CancelToken), "NbdPowerShell service", "Checking the service");
            return client;
        }
        catch (NbdServiceNotRunningException)
        {
        }
        if (OperatingSystem.IsWindows())
            throw new NbdHostException(ErrorIds.PlatformNotSupported, "The NbdPowerShell service runs on Linux only.");
        var paths = client.Paths;
        if (SystemdUnit.IsSystemdRunning && paths.IsDefault && File.Exists(SystemdUnit.DefaultPath))
        {
            WriteVerbose($"Starting the NbdPowerShell service with systemctl start {SystemdUnit.UnitName}.");
            SystemdUnit.Systemctl("start", SystemdUnit.UnitName);
            Wait(client.HelloAsync(CancelToken), "NbdPowerShell service", "Waiting for the service");
            return client;
        }
        WriteVerbose($"Starting the NbdPowerShell service on demand (control socket {paths.ControlSocket}, log {paths.LogFile}).");
        int pid = Wait(ServiceLauncher.StartAsync(Hosts.ModuleManifest, paths, ServiceStartTimeout, CancelToken), "NbdPowerShell service", "Starting the service");
        WriteVerbose($"The NbdPowerShell service runs (pid {pid}).");
        return client;
    }

    /// <summary>
    /// Asks the service something when it runs; null when it does not. A caller that may not talk to it (not root)
    /// gets one warning per command, any other failure a warning too: listings still show this process's part.
    /// </summary>
    internal T? QueryService<T>(Func<ServiceClient, CancellationToken, Task<T>> query) where T : class
    {
        var client = Hosts.Service;
        if (!client.SocketExists)
            return null;
        try
        {
            return Wait(query(client, CancelToken), "NbdPowerShell service", "Asking the service");
        }
        catch (NbdServiceNotRunningException)
        {
            return null;
        }
        catch (NbdHostException e) when (!_warnedAboutService)
        {
            _warnedAboutService = true;
            WriteWarning(e.ErrorId == ErrorIds.PermissionDenied
                ? "The NbdPowerShell service's exports and devices are not shown: only root may ask the service (run PowerShell as root)."
                : $"The NbdPowerShell service did not answer: {e.Message}");
            return null;
        }
        catch (NbdHostException)
        {
            return null;
        }
    }

    /// <summary>The service's status; null when it is not running. Other failures (not root) are thrown.</summary>
    internal ServiceStatus? StatusOf(ServiceClient client)
    {
        if (!client.SocketExists)
            return null;
        try
        {
            return Wait(client.GetStatusAsync(CancelToken), "NbdPowerShell service", "Asking the service");
        }
        catch (NbdServiceNotRunningException)
        {
            return null;
        }
    }

    /// <summary>Every export: this process's, then the service's.</summary>
    internal List<ExportInfo> AllExports(HostScope? scope = null)
    {
        var all = new List<ExportInfo>();
        if (scope is null or HostScope.Process)
            all.AddRange(Hosts.Process.GetExports());
        if (scope is null or HostScope.Service)
            all.AddRange(QueryService((c, ct) => c.GetExportsAsync(ct)) ?? []);
        return all;
    }

    /// <summary>
    /// Every session: the kernel's connected devices merged with what their owners (this process, the service)
    /// report, plus owned devices the kernel no longer shows (Disconnected, Failed) so they can be forgotten.
    /// Null after writing the failure when the kernel cannot be asked.
    /// </summary>
    internal List<NbdSession>? AllSessions(bool includeFree = false)
    {
        if (DiscoverDevices() is not { } devices)
            return null;
        var owned = new List<DeviceStatus>(Hosts.Process.Devices.GetStatus());
        owned.AddRange(QueryService((c, ct) => c.GetDevicesAsync(ct)) ?? []);
        var sessions = new List<NbdSession>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var info in devices)
        {
            var owner = owned.FirstOrDefault(o => o.Device == info.Device);
            if (!info.IsConnected && owner is null && !includeFree)
                continue;
            seen.Add(info.Device);
            sessions.Add(OutputMapper.ToSession(info, owner, Hosts.Process));
        }
        foreach (var owner in owned.Where(o => o.Device is null || !seen.Contains(o.Device)))
            sessions.Add(OutputMapper.ToSession(null, owner, Hosts.Process));
        return sessions;
    }

    /// <summary>The host that owns a device node (this process or the service); null when none does.</summary>
    internal INbdHost? OwnerOf(string device)
    {
        if (Hosts.Process.Devices.Find(device) is not null)
            return Hosts.Process;
        var service = QueryService((c, ct) => c.GetDevicesAsync(ct));
        return service?.Any(d => d.Device == device || d.Id == device) == true ? Hosts.Service : null;
    }
}
