using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Hosting;

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
            _names.AddRange(InputObject.Select(e => e.Name));
        else if (Name is null)
            _names.AddRange(Hosts.Process.Names);
        else
            _names.AddRange(Selection.ByName(this, Name, Hosts.Process.Names, n => n, "No export named '{0}' is served by this PowerShell process; Get-NbdExport lists them."));
    }

    protected override void EndProcessing()
    {
        var names = _names.Distinct(StringComparer.OrdinalIgnoreCase).ToList();
        var last = names.Select(Hosts.Process.GetExport).OfType<ExportInfo>().ToDictionary(e => e.Name, StringComparer.OrdinalIgnoreCase);
        var all = Task.WhenAll(names.Select(Hosts.Process.WhenStopped));
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
                    WriteObject(OutputMapper.ToExport(e with { State = "Stopped", ClientCount = 0 }));
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
