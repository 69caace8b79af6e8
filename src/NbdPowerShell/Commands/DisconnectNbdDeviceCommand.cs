using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Commands;

/// <summary>
/// Detaches nbd devices, through their owner when an NbdPowerShell process owns them (the service forgets a persistent
/// one), and the service's FUSE devices (loop device, FUSE mount, connections). A mounted (or otherwise held) device
/// is refused unless -Force.
/// </summary>
[Cmdlet(VerbsCommunications.Disconnect, "NbdDevice", DefaultParameterSetName = DeviceSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdSession))]
public sealed class DisconnectNbdDeviceCommand : NbdCmdlet
{
    private const string DeviceSet = "Device";
    private const string IndexSet = "Index";
    private const string InputObjectSet = "InputObject";

    [Parameter(ParameterSetName = DeviceSet, Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [Alias("Path")]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    [ValidateNotNullOrEmpty]
    public string[] Device { get; set; } = [];

    [Parameter(ParameterSetName = IndexSet, Mandatory = true)]
    [ValidateRange(0, int.MaxValue)]
    public int[] Index { get; set; } = [];

    [Parameter(ParameterSetName = InputObjectSet, Mandatory = true, ValueFromPipeline = true)]
    [ValidateNotNull]
    public NbdSession[] InputObject { get; set; } = [];

    /// <summary>Disconnect even when mounted or held: pending and later I/O on it fails.</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    [Parameter]
    public SwitchParameter PassThru { get; set; }

    /// <summary>Seconds to wait for the device to become free.</summary>
    [Parameter]
    [ValidateRange(1, 3600)]
    public int Timeout { get; set; } = 30;

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        DrainEngineLog();
        // A target is an nbd device (by index) or a FUSE device of the service (by its /dev/loopN, Index null).
        var targets = new List<(int? Index, string Device, string Text)>();
        switch (ParameterSetName)
        {
            case InputObjectSet:
                targets.AddRange(InputObject.Select(s => (s.Driver == "Fuse" ? (int?)null : s.Index, s.Driver == "Fuse" ? s.Device : $"/dev/nbd{s.Index}", s.Device)));
                break;
            case IndexSet:
                targets.AddRange(Index.Select(i => ((int?)i, $"/dev/nbd{i}", $"/dev/nbd{i}")));
                break;
            default:
                foreach (string d in Device)
                {
                    if (Selection.ParseDevice(d) is int i)
                        targets.Add((i, $"/dev/nbd{i}", d));
                    else if (d.Trim().StartsWith("/dev/loop", StringComparison.Ordinal))
                        targets.Add((null, d.Trim(), d));
                    else
                        WriteNotFound(d, $"'{d}' is not an nbd device or a FUSE device's loop device; use /dev/nbdN or /dev/loopN (Get-NbdSession lists the attached ones).");
                }
                break;
        }

        if (targets.Count == 0 || AllSessions(includeFree: true) is not { } sessions)
            return;
        foreach (var (index, device, text) in targets)
        {
            var before = sessions.FirstOrDefault(s => s.Device == device && (index is not null || s.Driver == "Fuse"));
            if (before is null && index is null)
            {
                WriteNotFound(text, $"{device} is not a FUSE device of the NbdPowerShell service; Get-NbdSession lists them (a loop device of another tool is detached with losetup -d).");
                continue;
            }
            if (before is null)
            {
                WriteNotFound(text, $"{device} does not exist on this machine; Get-NbdSession lists the attached devices.");
                continue;
            }
            string what = before.BackendIdentifier is { } b ? $"{device} ({b})" : device;
            if (before.MountPoints.Length > 0)
                what += $", mounted at {string.Join(", ", before.MountPoints)}";
            if (before.Scope == "Service")
                what += $", owned by the NbdPowerShell service{(before.IsPersistent ? " (it forgets it)" : "")}";
            if (before.Driver == "Fuse")
                what += $", through FUSE ({before.BackingFile})";
            if (!ShouldProcess(what, "Disconnect NBD device"))
                continue;
            TryRun(() =>
            {
                var timeout = TimeSpan.FromSeconds(Timeout);
                Task detach = before.Scope switch
                {
                    "Service" => Hosts.Service.DetachDeviceAsync(device, Force, timeout, CancelToken),
                    "Process" => Hosts.Process.DetachDeviceAsync(device, Force, timeout, CancelToken),
                    // No NbdPowerShell process owns it (nbd-client, qemu-nbd, or a plain device the kernel holds alone).
                    _ => new KernelAttacher(EngineLog.Default).DisconnectAsync(index!.Value, Force, timeout, CancelToken),
                };
                Wait(detach, "Disconnect-NbdDevice", $"Disconnecting {device}");
                if (PassThru)
                    WriteObject(before with { IsConnected = false, State = "Disconnected", Changed = true });
            }, text);
        }
    }
}
