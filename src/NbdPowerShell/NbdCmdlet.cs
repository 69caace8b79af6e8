using System.Diagnostics;
using System.Management.Automation;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell;

/// <summary>
/// Base of every NbdPowerShell cmdlet: Ctrl+C (StopProcessing) cancels a token that every wait honours;
/// engine messages queued by <see cref="EngineLog"/> are written here, on the pipeline thread, as
/// Verbose or Warning; waits show Write-Progress when they take a while.
/// </summary>
public abstract partial class NbdCmdlet : PSCmdlet, IDisposable
{
    private static int _nextProgressId = 0x4E4244;
    private readonly CancellationTokenSource _cancel = new();

    /// <summary>Cancelled when the user presses Ctrl+C or the pipeline stops.</summary>
    protected CancellationToken CancelToken => _cancel.Token;

    /// <summary>Kernel-facing cmdlets set this: BeginProcessing then ends with NbdPlatformNotSupported off Linux.</summary>
    protected virtual bool LinuxOnly => false;

    protected override void BeginProcessing()
    {
        if (LinuxOnly)
            RequireLinux();
        DrainEngineLog();
    }

    protected override void EndProcessing() => DrainEngineLog();

    protected override void StopProcessing() => _cancel.Cancel();

    public void Dispose()
    {
        _cancel.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>Writes queued engine messages; call only on the pipeline thread.</summary>
    protected void DrainEngineLog()
    {
        int dropped = EngineLog.Default.TakeDroppedCount();
        if (dropped > 0)
            WriteVerbose($"{dropped} older engine messages were dropped.");
        while (EngineLog.Default.TryDequeue(out var message))
        {
            if (message.Level >= LogLevel.Warning)
                WriteWarning(message.Text);
            else
                WriteVerbose(message.Text);
        }
    }

    /// <summary>
    /// Waits for an engine operation on the pipeline thread, draining engine messages meanwhile and showing
    /// progress once it takes longer than half a second. Ctrl+C cancels it. Exceptions are rethrown unwrapped.
    /// </summary>
    protected T Wait<T>(Task<T> task, string activity, string status)
    {
        WaitCore(task, activity, status);
        return task.GetAwaiter().GetResult();
    }

    protected void Wait(Task task, string activity, string status)
    {
        WaitCore(task, activity, status);
        task.GetAwaiter().GetResult();
    }

    private void WaitCore(Task task, string activity, string status)
    {
        var clock = Stopwatch.StartNew();
        ProgressRecord? progress = null;
        try
        {
            while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(100))
            {
                DrainEngineLog();
                if (clock.Elapsed > TimeSpan.FromMilliseconds(500))
                {
                    progress ??= new ProgressRecord(Interlocked.Increment(ref _nextProgressId), activity, status);
                    progress.StatusDescription = $"{status} ({clock.Elapsed.TotalSeconds:0} s)";
                    WriteProgress(progress);
                }
            }
        }
        finally
        {
            if (progress is not null && !_cancel.IsCancellationRequested)
            {
                progress.RecordType = ProgressRecordType.Completed;
                WriteProgress(progress);
            }
        }
        DrainEngineLog();
        if (task.IsCanceled && _cancel.IsCancellationRequested)
            throw new PipelineStoppedException();
    }

    /// <summary>Writes a non-terminating error for one input, classified by the catalogue.</summary>
    protected void WriteNbdError(Exception exception, object? target)
    {
        if (exception is OperationCanceledException && _cancel.IsCancellationRequested)
            throw new PipelineStoppedException();
        WriteError(ErrorRecords.From(exception, target));
    }

    protected internal void WriteNbdError(string errorId, string message, object? target) =>
        WriteError(ErrorRecords.Create(errorId, message, target));

    internal void WriteNotFound(string target, string message) => WriteNbdError(ErrorIds.DeviceNotFound, message, target);

    /// <summary>Kernel-facing cmdlets need Linux: otherwise a terminating NbdPlatformNotSupported.</summary>
    protected void RequireLinux()
    {
        if (!OperatingSystem.IsLinux())
        {
            ThrowTerminatingError(ErrorRecords.Create(ErrorIds.PlatformNotSupported,
                $"{MyInvocation.MyCommand.Name} needs Linux and its nbd driver; this is {System.Runtime.InteropServices.RuntimeInformation.OSDescription}. Serving exports (Start-NbdExport) works on any OS.",
                null));
        }
    }

    /// <summary>Every nbd device on the machine, or null after writing the failure as an error record.</summary>
    protected IReadOnlyList<NbdDeviceInfo>? DiscoverDevices()
    {
        try
        {
            return NbdDeviceDiscovery.System().GetDevices();
        }
        catch (Exception e) when (IsExpected(e))
        {
            WriteNbdError(e, null);
            return null;
        }
    }

    /// <summary>True when an exception is an expected failure the catalogue knows (so it becomes an error record).</summary>
    protected static bool IsExpected(Exception exception) =>
        exception is not PipelineStoppedException && ErrorIds.Classify(exception) is not null;

    /// <summary>Writes every failure of one input item as an error record, never letting it end the pipeline by surprise.</summary>
    protected bool TryRun(Action action, object? target)
    {
        try
        {
            action();
            return true;
        }
        catch (Exception e) when (e is not PipelineStoppedException and not OperationCanceledException && IsExpected(e))
        {
            WriteNbdError(e, target);
            return false;
        }
        catch (OperationCanceledException) when (_cancel.IsCancellationRequested)
        {
            throw new PipelineStoppedException();
        }
    }
}
