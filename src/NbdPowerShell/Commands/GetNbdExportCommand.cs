using System.Management.Automation;
using NbdPowerShell.Completers;

namespace NbdPowerShell.Commands;

/// <summary>Lists the exports this PowerShell process serves.</summary>
[Cmdlet(VerbsCommon.Get, "NbdExport")]
[OutputType(typeof(NbdExport))]
public sealed class GetNbdExportCommand : NbdCmdlet
{
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ExportNameCompleter))]
    [ValidateNotNullOrEmpty]
    public string[]? Name { get; set; }

    protected override void ProcessRecord()
    {
        var exports = Hosts.Process.GetExports();
        var chosen = Name is null ? exports : Selection.ByName(this, Name, exports, e => e.Name, "No export named '{0}' is served by this PowerShell process; Get-NbdExport lists them.");
        foreach (var export in chosen)
            WriteObject(OutputMapper.ToExport(export));
    }
}
