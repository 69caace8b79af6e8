using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Commands;

/// <summary>Lists every attached nbd device on the machine, whoever attached it (this module, nbd-client, qemu-nbd).</summary>
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
        if (DiscoverDevices() is not { } devices)
            return;
        var connected = devices.Where(d => d.IsConnected).ToList();
        foreach (var info in Selection.Devices(this, connected, devices, Device, ParameterSetName == IndexSet ? Index : null, "connected"))
            WriteObject(OutputMapper.ToSession(info, Hosts.Process));
    }
}
