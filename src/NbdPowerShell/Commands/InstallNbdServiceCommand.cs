using System.Management.Automation;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell.Commands;

/// <summary>
/// Writes the systemd unit that runs the NbdPowerShell service at boot and, where systemd is the init system,
/// enables it. Where systemd is not running (containers, CI) it says so: there the service starts on demand.
/// </summary>
[Cmdlet(VerbsLifecycle.Install, "NbdService", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdService))]
public sealed class InstallNbdServiceCommand : NbdCmdlet
{
    /// <summary>Where to write the unit; systemd is only told about the default location.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string Path { get; set; } = SystemdUnit.DefaultPath;

    /// <summary>Overwrite a unit file that Install-NbdService did not write.</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        string path = SessionState.Path.GetUnresolvedProviderPathFromPSPath(Path);
        var paths = Hosts.ServicePaths;
        TryRun(() =>
        {
            int grace = new ConfigurationStore(paths.ConfigurationFile, NullLogger.Instance).Load().ShutdownGraceSeconds;
            string text = SystemdUnit.Render(Hosts.ModuleManifest, paths, grace);
            bool exists = File.Exists(path);
            string? current = exists ? File.ReadAllText(path) : null;
            bool changed = current != text;
            if (exists && changed && !current!.Contains("Written by Install-NbdService", StringComparison.Ordinal) && !Force)
                throw new ArgumentException($"{path} exists and was not written by Install-NbdService; use -Force to overwrite it.");
            if (changed)
            {
                if (!ShouldProcess(path, exists ? "Replace the NbdPowerShell systemd unit" : "Write the NbdPowerShell systemd unit"))
                    return;
                SystemdUnit.Write(path, text);
                WriteVerbose($"Wrote {path}: it runs {string.Join(' ', ServiceLauncher.PwshCommand())} with the module {Hosts.ModuleManifest}.");
            }
            else
            {
                WriteVerbose($"{path} is up to date.");
            }
            bool managed = path == SystemdUnit.DefaultPath;
            if (!SystemdUnit.IsSystemdRunning)
            {
                WriteWarning($"systemd is not running on this machine (PID 1 is {InitName()}), so the unit was written but not enabled and nothing starts it at boot. " +
                    "The service starts on demand with the first -Persistent command, or with Start-NbdService; that is the way on this machine.");
            }
            else if (!managed)
            {
                WriteWarning($"The unit was written to {path}, where systemd does not look; install to {SystemdUnit.DefaultPath} (the default) to have systemd run the service.");
            }
            else if (ShouldProcess(SystemdUnit.UnitName, "Enable at boot (systemctl enable)"))
            {
                SystemdUnit.Systemctl("daemon-reload");
                SystemdUnit.Systemctl("enable", SystemdUnit.UnitName);
                changed = true;
                if (StatusOf(Hosts.Service) is { IsSystemdManaged: false } onDemand)
                    WriteWarning($"A service started on demand runs now (pid {onDemand.ProcessId}); it keeps running. systemd runs the service from the next boot, or now after: Stop-NbdService; systemctl start {SystemdUnit.UnitName}");
                else
                    SystemdUnit.Systemctl("start", SystemdUnit.UnitName);
            }
            WriteObject(OutputMapper.ToService(paths, StatusOf(Hosts.Service), path) with { Changed = changed });
        }, path);
    }

    private static string InitName()
    {
        try { return File.ReadAllText("/proc/1/comm").Trim(); }
        catch (IOException) { return "unknown"; }
    }
}
