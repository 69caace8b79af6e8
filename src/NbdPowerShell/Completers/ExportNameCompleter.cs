using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;

namespace NbdPowerShell.Completers;

/// <summary>Completes -Name with the exports this process serves.</summary>
public sealed class ExportNameCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters) =>
        CompletionText.Complete(Hosts.Process.GetExports().Select(e => (e.Name, $"{e.Name} ({e.Uri}, {e.Size} bytes)")), wordToComplete);
}
