using System.Management.Automation;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell.Commands;

/// <summary>
/// Starts the NbdPowerShell service unless it runs: with systemd when its unit is installed and systemd runs,
/// otherwise on demand, detached from this session. It restores its persistent exports and devices.
/// </summary>
[Cmdlet(VerbsLifecycle.Start, "NbdService", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(NbdService))]
public sealed class StartNbdServiceCommand : NbdCmdlet
{
    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        var client = Hosts.Service;
        TryRun(() =>
        {
            if (StatusOf(client) is { } running)
            {
                WriteVerbose($"The NbdPowerShell service runs already (pid {running.ProcessId}); nothing changed.");
                WriteObject(OutputMapper.ToService(client.Paths, running, SystemdUnit.DefaultPath));
                return;
            }
            if (!ShouldProcess($"NbdPowerShell service on {client.Paths.ControlSocket}", "Start"))
                return;
            StartService();
            WriteObject(OutputMapper.ToService(client.Paths, StatusOf(client), SystemdUnit.DefaultPath) with { Changed = true });
        }, client.Paths.ControlSocket);
    }
}
