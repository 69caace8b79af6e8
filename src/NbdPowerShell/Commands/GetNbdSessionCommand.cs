using System.Management.Automation;
using NbdPowerShell.Completers;

namespace NbdPowerShell.Commands;

/// <summary>
/// Lists every attached nbd device on the machine, whoever attached it (this module, the NbdPowerShell service,
/// nbd-client, qemu-nbd), with which process owns or relays it and, for devices of the service, their state and history;
/// and the service's FUSE devices (/dev/loopN, Driver Fuse) with their FUSE file and statistics.
/// </summary>
[Cmdlet(VerbsCommon.Get, "NbdSession", DefaultParameterSetName = DeviceSet)]
[OutputType(typeof(NbdSession))]
public sealed class GetNbdSessionCommand : NbdCmdlet
{
    private const string DeviceSet = "Device";
    private const string IndexSet = "Index";

    [Parameter(ParameterSetName = DeviceSet, Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Path")]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    [ValidateNotNullOrEmpty]
    public string[]? Device { get; set; }

    [Parameter(ParameterSetName = IndexSet, Mandatory = true)]
    [ValidateRange(0, int.MaxValue)]
    public int[] Index { get; set; } = [];

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        if (DiscoverDevices() is not { } devices || AllSessions() is not { } sessions)
            return;
        var existing = devices.Select(d => d.Index).ToHashSet();
        foreach (var session in Selection.Devices(this, sessions, existing, Device, ParameterSetName == IndexSet ? Index : null, "connected", s => s.Driver == "Nbd" ? s.Index : -1, s => s.Device))
            WriteObject(session);
    }
}
