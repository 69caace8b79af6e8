using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Commands;

/// <summary>Lists the exports of this PowerShell process and of the NbdPowerShell service, with live statistics.</summary>
[Cmdlet(VerbsCommon.Get, "NbdExport")]
[OutputType(typeof(NbdExport))]
public sealed class GetNbdExportCommand : NbdCmdlet
{
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ExportNameCompleter))]
    [ValidateNotNullOrEmpty]
    public string[]? Name { get; set; }

    /// <summary>Only the exports of this process (Process) or of the service (Service).</summary>
    [Parameter(ValueFromPipelineByPropertyName = true)]
    [ValidateSet("Process", "Service")]
    public string? Scope { get; set; }

    protected override void ProcessRecord()
    {
        var exports = AllExports(Scope is null ? null : Enum.Parse<HostScope>(Scope));
        var chosen = Name is null ? exports : Selection.ByName(this, Name, exports, e => e.Name, NotFound);
        foreach (var export in chosen)
            WriteObject(OutputMapper.ToExport(export));
    }

    private string NotFound => Scope switch
    {
        "Process" => "No export named '{0}' is served by this PowerShell process; Get-NbdExport lists them.",
        "Service" => "No export named '{0}' is served by the NbdPowerShell service; Get-NbdExport lists them.",
        _ => "No export named '{0}' is served by this PowerShell process or the NbdPowerShell service; Get-NbdExport lists them.",
    };
}
