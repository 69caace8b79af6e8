using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Completers;

/// <summary>
/// Completes -ExportName by asking the server (NBD_OPT_LIST) named by -ComputerName/-Port or -SocketPath
/// already on the command line; without one, with the exports this process serves. Gives up after 3 seconds.
/// </summary>
public sealed class RemoteExportNameCompleter : IArgumentCompleter
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(3);

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        NbdUri? server = ServerOf(fakeBoundParameters);
        if (server is null)
            return new ExportNameCompleter().CompleteArgument(commandName, parameterName, wordToComplete, commandAst, fakeBoundParameters);
        try
        {
            var list = NbdClient.ListExportsAsync(server, NbdClientOptions.Default with { Timeout = Limit })
                .WaitAsync(Limit + TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
            return CompletionText.Complete(list.Select(e => (e.Name, string.IsNullOrEmpty(e.Description) ? e.Name : $"{e.Name}: {e.Description}")), wordToComplete).ToList();
        }
        catch (Exception)
        {
            return [];
        }
    }

    internal static NbdUri? ServerOf(IDictionary bound)
    {
        if (bound["SocketPath"] is { } socket && Unwrap(socket) is string path && path.Length > 0)
            return NbdUri.ForUnix(path);
        if (bound["ComputerName"] is { } host && Unwrap(host) is string name && name.Length > 0)
        {
            int port = NbdLimits.DefaultPort;
            if (bound["Port"] is { } p && int.TryParse(Unwrap(p)?.ToString(), out int parsed) && parsed is > 0 and < 65536)
                port = parsed;
            return NbdUri.ForTcp(name, port);
        }
        return null;
    }

    private static object? Unwrap(object value) => value is PSObject pso ? pso.BaseObject : value;
}
