using System.Management.Automation;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Copy;

namespace NbdPowerShell;

/// <summary>
/// Base of the cmdlets that read whole disks (Copy-NbdDisk, Get-NbdDiskHash): the shared parameters, turning
/// pipeline input into disk locations, and showing the engine's progress while it works.
/// </summary>
public abstract class NbdDiskCmdlet : NbdClientCmdlet
{
    private static int _nextActivityId = 0x4E4244 + 0x10000;

    /// <summary>Connections per NBD side when the server allows multi-conn.</summary>
    [Parameter]
    [ValidateRange(1, 16)]
    public int Connections { get; set; } = DiskCopyOptions.Default.Connections;

    /// <summary>Bytes per read or write request; omitted, chosen from the servers' preferred and maximum sizes.</summary>
    [Parameter]
    [ValidateRange(4096, DiskCopyOptions.MaximumRequestSize)]
    public int RequestSize { get; set; }

    /// <summary>Seconds allowed for connecting to each NBD server.</summary>
    [Parameter]
    [ValidateRange(1, 3600)]
    public int Timeout { get; set; } = 30;

    protected override bool LinuxOnly => true;

    /// <summary>The options every disk cmdlet shares; TLS settings apply to every NBD side.</summary>
    protected DiskCopyOptions BaseOptions() => DiskCopyOptions.Default with
    {
        Connections = Connections,
        RequestSize = RequestSize,
        Client = NbdClientOptions.Default with { Timeout = TimeSpan.FromSeconds(Timeout), Tls = BuildTlsSpec()?.Load() },
    };

    /// <summary>
    /// A disk from what was given: an NBD URI or a path (relative to the current location) as text, a file from
    /// Get-ChildItem, or an object with a Uri (NbdExport, NbdRemoteExport, NbdSession) or a Device (an attached
    /// NbdSession without a URI: its /dev/nbdN). -UseTls makes nbd:// URIs nbds://.
    /// </summary>
    protected DiskLocation ResolveLocation(PSObject input, string parameter)
    {
        string? text = input.BaseObject switch
        {
            string s => s,
            FileSystemInfo f => f.FullName,
            _ => null,
        };
        if (text is null)
        {
            text = Property(input, "Uri");
            if (string.IsNullOrEmpty(text))
                text = Property(input, "Device") ?? Property(input, "FullName") ?? Property(input, "Path");
        }
        if (string.IsNullOrWhiteSpace(text))
            throw new ArgumentException($"-{parameter} '{input}' is neither an NBD URI nor a path, nor an object with a Uri (NbdExport, NbdRemoteExport, NbdSession).");
        if (DiskLocation.LooksLikeNbdUri(text))
        {
            var location = DiskLocation.Parse(text);
            return WantsTls ? DiskLocation.ForNbd(location.Uri!.WithTls(true)) : location;
        }
        return DiskLocation.ForPath(SessionState.Path.GetUnresolvedProviderPathFromPSPath(text));
    }

    private static string? Property(PSObject input, string name) => input.Properties[name]?.Value?.ToString();

    /// <summary>
    /// Waits for the engine on the pipeline thread, writing a progress record at once and then every quarter
    /// second (bytes done, rate, time left), a last one at 100 % when it succeeded, and the completion record.
    /// Ctrl+C cancels <see cref="NbdCmdlet.CancelToken"/>, which the engine task honours.
    /// </summary>
    protected T RunWithProgress<T>(Task<T> task, DiskProgress progress, string activity, string what)
    {
        // A new record each time: hosts may keep the records they were given (a runspace's Streams.Progress does).
        int id = Interlocked.Increment(ref _nextActivityId);
        bool stopping = false;
        try
        {
            do
            {
                try
                {
                    DrainEngineLog();
                    WriteProgress(Describe(id, activity, progress, what));
                }
                catch (PipelineStoppedException)
                {
                    // Ctrl+C: PowerShell refuses output as soon as the pipeline stops, before StopProcessing cancels
                    // the token; the copy's own account of what it left behind must not be lost to this write.
                    stopping = true;
                }
                if (stopping || CancelToken.IsCancellationRequested)
                {
                    stopping = true;
                    // The operation honours the token and ends with what it did (DiskOperationCanceledException),
                    // which the caller turns into the warning the admin needs. Under load that can take longer
                    // than one progress tick; an operation that does not end in time is left to its token.
                    if (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(StopWait))
                        throw new PipelineStoppedException();
                    break;
                }
            }
            while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(250));
            if (task.IsCompletedSuccessfully && !stopping)
            {
                var done = Describe(id, activity, progress, what);
                done.PercentComplete = 100;
                done.SecondsRemaining = 0;
                WriteProgress(done);
            }
        }
        finally
        {
            if (!stopping && !CancelToken.IsCancellationRequested)
                WriteProgress(new ProgressRecord(id, activity, what) { RecordType = ProgressRecordType.Completed });
        }
        if (!stopping)
            DrainEngineLog();
        return task.GetAwaiter().GetResult();
    }

    /// <summary>How long a stopped (Ctrl+C) disk operation gets to end and say what it left behind.</summary>
    private static readonly TimeSpan StopWait = TimeSpan.FromSeconds(4);

    private static ProgressRecord Describe(int id, string activity, DiskProgress progress, string what)
    {
        long total = progress.Total, done = progress.Done;
        double seconds = progress.Elapsed.TotalSeconds;
        double rate = seconds > 0.2 ? done / seconds : 0;
        string rateText = rate > 0 ? $" at {DiskCopy.Bytes((long)rate)}/s" : "";
        return new ProgressRecord(id, activity, $"{progress.Phase} {what}: {DiskCopy.Bytes(done)} of {DiskCopy.Bytes(total)}{rateText}")
        {
            PercentComplete = total > 0 ? (int)Math.Min(99, done * 100 / total) : 0,
            SecondsRemaining = rate > 0 ? (int)Math.Min(int.MaxValue, (total - done) / rate) : -1,
            CurrentOperation = $"{DiskCopy.Bytes(progress.BytesRead)} read, {DiskCopy.Bytes(progress.BytesWritten)} written",
        };
    }

    /// <summary>
    /// After Ctrl+C the pipeline takes no more output, but the admin should still learn what state the disk is in;
    /// the host prints this directly. Returns the exception that ends the pipeline.
    /// </summary>
    protected PipelineStoppedException Stopped(string message)
    {
        try { Host.UI.WriteWarningLine(message); }
        catch (Exception e) when (e is PipelineStoppedException or NotImplementedException or InvalidOperationException) { }
        return new PipelineStoppedException();
    }
}
