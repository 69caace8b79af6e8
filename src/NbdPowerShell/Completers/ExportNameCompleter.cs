using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Completers;

/// <summary>Completes -Name with the exports this process serves and, when it answers within 2 seconds, those of the service.</summary>
public sealed class ExportNameCompleter : IArgumentCompleter
{
    private static readonly TimeSpan ServiceLimit = TimeSpan.FromSeconds(2);

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var exports = new List<ExportInfo>(Hosts.Process.GetExports());
        var service = Hosts.Service;
        if (service.SocketExists)
        {
            try
            {
                using var limit = new CancellationTokenSource(ServiceLimit);
                exports.AddRange(service.GetExportsAsync(limit.Token).WaitAsync(ServiceLimit).GetAwaiter().GetResult());
            }
            catch (Exception)
            {
                // Completion never fails: without the service it offers what this process serves.
            }
        }
        return CompletionText.Complete(exports.DistinctBy(e => e.Name, StringComparer.OrdinalIgnoreCase)
            .Select(e => (e.Name, $"{e.Name} ({e.Scope}, {e.Uri}, {e.Size} bytes)")), wordToComplete);
    }
}
