using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Commands;

/// <summary>Detaches nbd devices. A mounted (or otherwise held) device is refused unless -Force.</summary>
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
        var targets = new List<(int Index, string Text)>();
        switch (ParameterSetName)
        {
            case InputObjectSet:
                targets.AddRange(InputObject.Select(s => (s.Index, s.Device)));
                break;
            case IndexSet:
                targets.AddRange(Index.Select(i => (i, $"/dev/nbd{i}")));
                break;
            default:
                foreach (string d in Device)
                {
                    if (Selection.ParseDevice(d) is int i)
                        targets.Add((i, d));
                    else
                        WriteNotFound(d, $"'{d}' is not an nbd device; use /dev/nbdN (Get-NbdSession lists the attached ones).");
                }
                break;
        }

        var discovery = NbdDeviceDiscovery.System();
        foreach (var (index, text) in targets)
        {
            NbdDeviceInfo? info;
            try
            {
                info = discovery.GetDevice(index);
            }
            catch (Exception e) when (IsExpected(e))
            {
                WriteNbdError(e, text);
                continue;
            }
            if (info is null)
            {
                WriteNotFound(text, $"/dev/nbd{index} does not exist on this machine; Get-NbdSession lists the attached devices.");
                continue;
            }
            string what = info.BackendIdentifier is { } b ? $"{info.Device} ({b})" : info.Device;
            if (info.MountPoints.Count > 0)
                what += $", mounted at {string.Join(", ", info.MountPoints)}";
            if (!ShouldProcess(what, "Disconnect NBD device"))
                continue;
            var before = OutputMapper.ToSession(info, Hosts.Process);
            TryRun(() =>
            {
                Wait(new KernelAttacher(EngineLog.Default).DisconnectAsync(index, Force, TimeSpan.FromSeconds(Timeout), CancelToken),
                    "Disconnect-NbdDevice", $"Disconnecting {info.Device}");
                if (PassThru)
                    WriteObject(before with { IsConnected = false, Changed = true });
            }, text);
        }
    }
}
