using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Commands;

/// <summary>Lists every nbd device node with its state (Free or Connected), so admins see what capacity is left.</summary>
[Cmdlet(VerbsCommon.Get, "NbdDevice")]
[OutputType(typeof(NbdDevice))]
public sealed class GetNbdDeviceCommand : NbdCmdlet
{
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Path")]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    [ValidateNotNullOrEmpty]
    public string[]? Device { get; set; }

    /// <summary>Only free devices (what Connect-NbdDevice without -Device would pick from).</summary>
    [Parameter]
    public SwitchParameter Free { get; set; }

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        if (DiscoverDevices() is not { } devices)
            return;
        if (devices.Count == 0 && !Directory.Exists("/sys/module/nbd"))
            WriteWarning("The nbd kernel module is not loaded, so there are no nbd devices; load it as root with: modprobe nbd");
        var candidates = Free ? devices.Where(d => !d.IsConnected).ToList() : devices;
        var existing = devices.Select(d => d.Index).ToHashSet();
        foreach (var info in Selection.Devices(this, candidates, existing, Device, null, Free ? "free" : "an nbd device", d => d.Index, d => d.Device))
            WriteObject(OutputMapper.ToDevice(info));
    }
}
