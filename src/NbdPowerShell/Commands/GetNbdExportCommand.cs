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
        var exports = ExportHost.Default.GetExports();
        if (Name is null)
        {
            WriteObject(exports, enumerateCollection: true);
            return;
        }
        var written = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        foreach (string name in Name)
        {
            var pattern = new WildcardPattern(name, WildcardOptions.IgnoreCase);
            var matches = exports.Where(e => pattern.IsMatch(e.Name)).ToList();
            if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(name))
            {
                WriteNbdError(ErrorIds.ExportNotFound, $"No export named '{name}' is served by this PowerShell process; Get-NbdExport lists them.", name);
                continue;
            }
            foreach (var export in matches.Where(e => written.Add(e.Name)))
                WriteObject(export);
        }
    }
}
