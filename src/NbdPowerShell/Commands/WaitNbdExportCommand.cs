using System.Management.Automation;
using NbdPowerShell.Completers;

namespace NbdPowerShell.Commands;

/// <summary>
/// Blocks until the given exports (default: all of them) stop, or Ctrl+C. Meant for `pwsh -c` services and
/// scripts: the exports live in this process, so it must stay busy while they serve. Engine messages are
/// written as they come (use -Verbose to see connects and disconnects).
/// </summary>
[Cmdlet(VerbsLifecycle.Wait, "NbdExport", DefaultParameterSetName = NameSet)]
[OutputType(typeof(NbdExport))]
public sealed class WaitNbdExportCommand : NbdCmdlet
{
    private const string NameSet = "Name";
    private const string InputObjectSet = "InputObject";
    private readonly List<string> _names = [];

    [Parameter(ParameterSetName = NameSet, Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ExportNameCompleter))]
    [ValidateNotNullOrEmpty]
    public string[]? Name { get; set; }

    [Parameter(ParameterSetName = InputObjectSet, Mandatory = true, ValueFromPipeline = true)]
    [ValidateNotNull]
    public NbdExport[] InputObject { get; set; } = [];

    /// <summary>Give up after this many seconds (writes an NbdTimeout error); default: wait forever.</summary>
    [Parameter]
    [ValidateRange(1, int.MaxValue)]
    public int Timeout { get; set; }

    /// <summary>Write the stopped exports.</summary>
    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override void ProcessRecord()
    {
        DrainEngineLog();
        if (ParameterSetName == InputObjectSet)
        {
            _names.AddRange(InputObject.Select(e => e.Name));
            return;
        }
        var current = ExportHost.Default.Names;
        if (Name is null)
        {
            _names.AddRange(current);
            return;
        }
        foreach (string name in Name)
        {
            var pattern = new WildcardPattern(name, WildcardOptions.IgnoreCase);
            var matches = current.Where(pattern.IsMatch).ToList();
            if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(name))
                WriteNbdError(ErrorIds.ExportNotFound, $"No export named '{name}' is served by this PowerShell process; Get-NbdExport lists them.", name);
            _names.AddRange(matches);
        }
    }

    protected override void EndProcessing()
    {
        var names = _names.Distinct(StringComparer.OrdinalIgnoreCase).ToList();
        var last = names.Select(ExportHost.Default.GetExport).OfType<NbdExport>().ToDictionary(e => e.Name, StringComparer.OrdinalIgnoreCase);
        var all = Task.WhenAll(names.Select(ExportHost.Default.WhenStopped));
        Task waited = Timeout > 0 ? all.WaitAsync(TimeSpan.FromSeconds(Timeout), CancelToken) : all.WaitAsync(CancelToken);
        WriteVerbose($"Waiting for {names.Count} export(s) to stop: {string.Join(", ", names)}. Press Ctrl+C to stop waiting.");
        try
        {
            WaitQuietly(waited);
        }
        catch (TimeoutException)
        {
            WriteNbdError(ErrorIds.Timeout, $"The exports were still running after {Timeout} s.", string.Join(",", names));
            return;
        }
        if (PassThru)
        {
            foreach (var name in names)
            {
                if (last.TryGetValue(name, out var e))
                    WriteObject(new NbdExport
                    {
                        Name = e.Name, Description = e.Description, Path = e.Path, Backend = e.Backend, Size = e.Size, IsReadOnly = e.IsReadOnly,
                        IsCopyOnWrite = e.IsCopyOnWrite, ListenAddress = e.ListenAddress, Port = e.Port, SocketPath = e.SocketPath,
                        AllowedClient = e.AllowedClient, MaxConnections = e.MaxConnections, State = "Stopped", StartTime = e.StartTime, Uri = e.Uri,
                    });
            }
        }
        base.EndProcessing();
    }

    /// <summary>Like Wait, but without a progress bar: waiting here is the point, not a slow step.</summary>
    private void WaitQuietly(Task task)
    {
        while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(200))
            DrainEngineLog();
        DrainEngineLog();
        if (task.IsCanceled)
            throw new PipelineStoppedException();
        task.GetAwaiter().GetResult();
    }
}
