using System.Management.Automation;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell.Commands;

/// <summary>
/// Disables and removes the systemd unit of the NbdPowerShell service. A running service keeps running (stop it
/// with Stop-NbdService); its configuration stays, so a later start or install brings everything back.
/// </summary>
[Cmdlet(VerbsLifecycle.Uninstall, "NbdService", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdService))]
public sealed class UninstallNbdServiceCommand : NbdCmdlet
{
    /// <summary>The unit file to remove.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string Path { get; set; } = SystemdUnit.DefaultPath;

    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        string path = SessionState.Path.GetUnresolvedProviderPathFromPSPath(Path);
        TryRun(() =>
        {
            bool changed = false;
            if (!File.Exists(path))
            {
                WriteVerbose($"{path} does not exist; nothing changed.");
            }
            else if (ShouldProcess(path, "Disable and remove the NbdPowerShell systemd unit"))
            {
                bool managed = path == SystemdUnit.DefaultPath && SystemdUnit.IsSystemdRunning;
                if (managed)
                    SystemdUnit.Systemctl("disable", SystemdUnit.UnitName);
                File.Delete(path);
                if (managed)
                    SystemdUnit.Systemctl("daemon-reload");
                changed = true;
                WriteVerbose($"Removed {path}. A running service keeps running until Stop-NbdService; its configuration ({Hosts.ServicePaths.ConfigurationFile}) stays.");
            }
            if (PassThru)
                WriteObject(OutputMapper.ToService(Hosts.ServicePaths, StatusOf(Hosts.Service), path) with { Changed = changed });
        }, path);
    }
}
