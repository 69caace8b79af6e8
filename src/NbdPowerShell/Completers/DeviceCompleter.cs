using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Completers;

/// <summary>
/// Completes -Device with nbd devices: for Connect-NbdDevice the free ones, for the others the connected ones
/// (falling back to every device when none is connected).
/// </summary>
public sealed class DeviceCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        if (!OperatingSystem.IsLinux())
            return [];
        IReadOnlyList<NbdDeviceInfo> devices;
        try
        {
            devices = new NbdDeviceDiscovery().GetDevices();
        }
        catch (Exception)
        {
            return [];
        }
        bool wantFree = commandName.Equals("Connect-NbdDevice", StringComparison.OrdinalIgnoreCase);
        var chosen = devices.Where(d => d.IsConnected != wantFree).ToList();
        if (chosen.Count == 0 && !wantFree)
            chosen = devices.ToList();
        return CompletionText.Complete(
            chosen.Select(d => (d.Device, d.IsConnected ? $"{d.Device}: connected, {d.Size} bytes{(d.BackendIdentifier is { } b ? " from " + b : "")}" : $"{d.Device}: free")),
            wordToComplete);
    }
}
