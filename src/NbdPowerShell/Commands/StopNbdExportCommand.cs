using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Commands;

/// <summary>
/// Stops exports of this PowerShell process or of the NbdPowerShell service (which also forgets a persistent one);
/// refuses while clients are connected unless -Force.
/// </summary>
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

    /// <summary>Only exports of this process (Process) or of the service (Service); both when omitted.</summary>
    [Parameter(ParameterSetName = NameSet, ValueFromPipelineByPropertyName = true)]
    [ValidateSet("Process", "Service")]
    public string? Scope { get; set; }

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
        var targets = ParameterSetName == InputObjectSet
            ? InputObject.Select(e => (e.Name, Scope: Enum.TryParse<HostScope>(e.Scope, out var s) ? s : HostScope.Process)).ToList()
            : Selection.ByName(this, Name, AllExports(Scope is null ? null : Enum.Parse<HostScope>(Scope)), e => e.Name,
                    "No export named '{0}' is served by this PowerShell process or the NbdPowerShell service; Get-NbdExport lists them.")
                .Select(e => (e.Name, e.Scope)).ToList();
        foreach (var (name, scope) in targets.Distinct())
        {
            string where = scope == HostScope.Service ? "the NbdPowerShell service" : "this PowerShell process";
            var export = scope == HostScope.Service
                ? QueryService((c, ct) => c.GetExportsAsync(ct))?.FirstOrDefault(e => string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase))
                : Hosts.Process.GetExport(name);
            if (export is null)
            {
                WriteNbdError(ErrorIds.ExportNotFound, $"No export named '{name}' is served by {where} (it may have been stopped already).", name);
                continue;
            }
            string clients = export.ClientCount > 0 ? $" ({export.ClientCount} client(s) connected)" : "";
            string forgotten = export.IsPersistent ? ", and remove it from the service's configuration" : "";
            if (!ShouldProcess($"{name} ({export.Uri}) served by {where}{clients}", $"Stop NBD export{forgotten}"))
                continue;
            TryRun(() =>
            {
                var stopped = Wait(Hosts.For(scope).StopExportAsync(name, Force, CancelToken), "Stop-NbdExport", $"Stopping export '{name}'");
                WriteVerbose($"Stopped export '{name}' served by {where}{(stopped.IsPersistent ? "; the service has forgotten it" : "")}.");
                if (PassThru)
                    WriteObject(OutputMapper.ToExport(stopped, changed: true));
            }, name);
        }
    }
}
