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
        foreach (var info in DeviceSelection.Select(this, connected, devices, Device, ParameterSetName == IndexSet ? Index : null, "connected"))
            WriteObject(SessionMapper.ToSession(info, ExportHost.Default));
    }
}

/// <summary>Shared -Device/-Index filtering: wildcard misses are silent, other misses are NbdDeviceNotFound errors.</summary>
internal static class DeviceSelection
{
    public static IEnumerable<NbdDeviceInfo> Select(NbdCmdlet cmdlet, IReadOnlyList<NbdDeviceInfo> candidates, IReadOnlyList<NbdDeviceInfo> all,
        string[]? device, int[]? index, string what)
    {
        var chosen = new List<NbdDeviceInfo>();
        if (device is null && index is null)
            return candidates;
        foreach (string d in device ?? [])
        {
            if (WildcardPattern.ContainsWildcardCharacters(d))
            {
                var pattern = new WildcardPattern(d, WildcardOptions.IgnoreCase);
                chosen.AddRange(candidates.Where(c => pattern.IsMatch(c.Device) || pattern.IsMatch($"nbd{c.Index}")));
                continue;
            }
            var i = SessionMapper.ParseDevice(d);
            var match = i is null ? null : candidates.FirstOrDefault(c => c.Index == i);
            if (match is null)
                cmdlet.WriteNotFound(d, all.Any(a => a.Index == i) ? $"{d} is not {what}." : $"{d} is not an nbd device on this machine; Get-NbdDevice lists them.");
            else
                chosen.Add(match);
        }
        foreach (int i in index ?? [])
        {
            var match = candidates.FirstOrDefault(c => c.Index == i);
            if (match is null)
                cmdlet.WriteNotFound($"/dev/nbd{i}", all.Any(a => a.Index == i) ? $"/dev/nbd{i} is not {what}." : $"/dev/nbd{i} is not an nbd device on this machine; Get-NbdDevice lists them.");
            else
                chosen.Add(match);
        }
        return chosen.DistinctBy(c => c.Index);
    }
}
