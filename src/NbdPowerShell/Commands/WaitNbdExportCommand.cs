using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Commands;

/// <summary>
/// Blocks until the given exports (default: all of this process) stop, or Ctrl+C. Meant for `pwsh -c` scripts
/// that serve from their own process, which must stay busy while the exports serve; exports of the service can be
/// waited for too. Engine messages are written as they come (use -Verbose to see connects and disconnects).
/// </summary>
[Cmdlet(VerbsLifecycle.Wait, "NbdExport", DefaultParameterSetName = NameSet)]
[OutputType(typeof(NbdExport))]
public sealed class WaitNbdExportCommand : NbdCmdlet
{
    private const string NameSet = "Name";
    private const string InputObjectSet = "InputObject";
    private static readonly TimeSpan ServicePoll = TimeSpan.FromSeconds(1);
    private readonly List<ExportInfo> _exports = [];

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
            var all = AllExports();
            _exports.AddRange(InputObject.Select(i => all.FirstOrDefault(e => e.Name == i.Name && e.Scope.ToString() == i.Scope)).OfType<ExportInfo>());
        }
        else if (Name is null)
            _exports.AddRange(Hosts.Process.GetExports());
        else
            _exports.AddRange(Selection.ByName(this, Name, AllExports(), e => e.Name,
                "No export named '{0}' is served by this PowerShell process or the NbdPowerShell service; Get-NbdExport lists them."));
    }

    protected override void EndProcessing()
    {
        var exports = _exports.DistinctBy(e => (e.Name.ToUpperInvariant(), e.Scope)).ToList();
        var all = Task.WhenAll(exports.Select(e => e.Scope == HostScope.Service ? WhenServiceExportStopped(e.Name, CancelToken) : Hosts.Process.WhenStopped(e.Name)));
        Task waited = Timeout > 0 ? all.WaitAsync(TimeSpan.FromSeconds(Timeout), CancelToken) : all.WaitAsync(CancelToken);
        string names = string.Join(", ", exports.Select(e => e.Name));
        WriteVerbose($"Waiting for {exports.Count} export(s) to stop: {names}. Press Ctrl+C to stop waiting.");
        try
        {
            WaitQuietly(waited);
        }
        catch (TimeoutException)
        {
            WriteNbdError(ErrorIds.Timeout, $"The exports were still running after {Timeout} s.", names);
            return;
        }
        if (PassThru)
        {
            foreach (var e in exports)
                WriteObject(OutputMapper.ToExport(e with { State = "Stopped", ClientCount = 0 }));
        }
        base.EndProcessing();
    }

    /// <summary>The service cannot call back: ask it every second until the export is gone (or the service is).</summary>
    private static async Task WhenServiceExportStopped(string name, CancellationToken cancellationToken)
    {
        var client = Hosts.Service;
        while (true)
        {
            try
            {
                var exports = await client.GetExportsAsync(cancellationToken).ConfigureAwait(false);
                if (!exports.Any(e => string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase) && e.State == "Running"))
                    return;
            }
            catch (Engine.Service.NbdServiceNotRunningException)
            {
                return;
            }
            await Task.Delay(ServicePoll, cancellationToken).ConfigureAwait(false);
        }
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
