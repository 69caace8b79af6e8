using System.Diagnostics;

namespace NbdPowerShell.Engine.Copy;

/// <summary>
/// Live counters of a copy or hash, updated by the workers and read by whoever reports progress (the cmdlet polls
/// it on the pipeline thread). All counts are bytes of the disk's address space.
/// </summary>
public sealed class DiskProgress
{
    private readonly Stopwatch _clock = new();
    private long _done, _read, _written, _zeroed;
    private long _total;
    private string _phase = "Starting";

    /// <summary>Bytes the current phase covers.</summary>
    public long Total => Volatile.Read(ref _total);

    /// <summary>Bytes of the current phase finished (data copied or hashed, or holes handled).</summary>
    public long Done => Volatile.Read(ref _done);

    public long BytesRead => Volatile.Read(ref _read);
    public long BytesWritten => Volatile.Read(ref _written);

    /// <summary>Bytes made zero on the destination with zero requests (holes and all-zero blocks).</summary>
    public long BytesZeroed => Volatile.Read(ref _zeroed);

    /// <summary>What is running: "Copying", "Verifying", "Hashing".</summary>
    public string Phase => Volatile.Read(ref _phase);

    public TimeSpan Elapsed => _clock.Elapsed;

    /// <summary>Starts a phase over <paramref name="total"/> bytes; the done count restarts at 0 (the other counters keep going).</summary>
    internal void StartPhase(string phase, long total)
    {
        Volatile.Write(ref _phase, phase);
        Volatile.Write(ref _total, total);
        Volatile.Write(ref _done, 0);
        _clock.Start();
    }

    internal void Stop() => _clock.Stop();

    internal void AddDone(long bytes) => Interlocked.Add(ref _done, bytes);
    internal void AddRead(long bytes) => Interlocked.Add(ref _read, bytes);
    internal void AddWritten(long bytes) => Interlocked.Add(ref _written, bytes);
    internal void AddZeroed(long bytes) => Interlocked.Add(ref _zeroed, bytes);
}
