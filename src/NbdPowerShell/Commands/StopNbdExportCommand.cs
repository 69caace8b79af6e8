using System.Management.Automation;
using NbdPowerShell.Completers;

namespace NbdPowerShell.Commands;

/// <summary>Stops exports of this PowerShell process; refuses while clients are connected unless -Force.</summary>
[Cmdlet(VerbsLifecycle.Stop, "NbdExport", DefaultParameterSetName = NameSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdExport))]
public sealed class StopNbdExportCommand : NbdCmdlet
{
    private const string NameSet = "Name";
    private const string InputObjectSet = "InputObject";

    [Parameter(ParameterSetName = NameSet, Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ExportNameCompleter))]
    [ValidateNotNullOrEmpty]
    public string[] Name { get; set; } = [];

    [Parameter(ParameterSetName = InputObjectSet, Mandatory = true, ValueFromPipeline = true)]
    [ValidateNotNull]
    public NbdExport[] InputObject { get; set; } = [];

    /// <summary>Stop even with clients connected: their in-flight requests finish, then they are disconnected.</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override void ProcessRecord()
    {
        DrainEngineLog();
        var names = ParameterSetName == InputObjectSet
            ? InputObject.Select(e => e.Name).ToList()
            : Selection.ByName(this, Name, Hosts.Process.Names, n => n, "No export named '{0}' is served by this PowerShell process; Get-NbdExport lists them.");
        foreach (string name in names.Distinct(StringComparer.OrdinalIgnoreCase))
        {
            var export = Hosts.Process.GetExport(name);
            if (export is null)
            {
                WriteNbdError(ErrorIds.ExportNotFound, $"No export named '{name}' is served by this PowerShell process (it may have been stopped already).", name);
                continue;
            }
            string clients = export.ClientCount > 0 ? $" ({export.ClientCount} client(s) connected)" : "";
            if (!ShouldProcess($"{name} ({export.Uri}){clients}", "Stop NBD export"))
                continue;
            TryRun(() =>
            {
                var stopped = Wait(Hosts.Process.StopExportAsync(name, Force, CancelToken), "Stop-NbdExport", $"Stopping export '{name}'");
                if (PassThru)
                    WriteObject(OutputMapper.ToExport(stopped, changed: true));
            }, name);
        }
    }
}
