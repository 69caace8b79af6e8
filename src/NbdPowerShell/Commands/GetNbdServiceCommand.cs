using System.Management.Automation;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell.Commands;

/// <summary>Reports the NbdPowerShell service: running or not, pid, version, uptime, its files, export and device counts.</summary>
[Cmdlet(VerbsCommon.Get, "NbdService")]
[OutputType(typeof(NbdService))]
public sealed class GetNbdServiceCommand : NbdCmdlet
{
    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        var client = Hosts.Service;
        TryRun(() => WriteObject(OutputMapper.ToService(client.Paths, StatusOf(client), SystemdUnit.DefaultPath)), client.Paths.ControlSocket);
    }
}
