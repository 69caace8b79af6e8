namespace NbdPowerShell.Engine.Fuse;

/// <summary>Counters of one FUSE disk, updated with Interlocked by the request paths.</summary>
internal sealed class FuseDiskCounters
{
    public long Reads;
    public long Writes;
    public long Flushes;
    public long Zeroes;
    public long BytesRead;
    public long BytesWritten;
    public long Errors;
    public long InFlight;
    public long PeakInFlight;

    public void Enter()
    {
        long now = Interlocked.Increment(ref InFlight);
        long peak;
        while (now > (peak = Interlocked.Read(ref PeakInFlight)) && Interlocked.CompareExchange(ref PeakInFlight, now, peak) != peak) { }
    }

    public void Leave() => Interlocked.Decrement(ref InFlight);
}

/// <summary>What the kernel asked of one FUSE-attached disk since it was attached: one consistent-enough snapshot.</summary>
public sealed record FuseDiskStatistics
{
    public long Reads { get; init; }
    public long Writes { get; init; }
    /// <summary>fsync and close-time flushes, each sent as NBD_CMD_FLUSH.</summary>
    public long Flushes { get; init; }
    /// <summary>Discards and zero-range requests (fallocate), each sent as NBD_CMD_WRITE_ZEROES.</summary>
    public long Zeroes { get; init; }
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    /// <summary>Requests answered with an error (server errors, lost connections, requests past the end).</summary>
    public long Errors { get; init; }
    /// <summary>Requests being served right now, and the most at once since attaching.</summary>
    public long InFlight { get; init; }
    public long PeakInFlight { get; init; }
    /// <summary>Connections opened again after one broke.</summary>
    public long Reconnects { get; init; }

    internal static FuseDiskStatistics From(FuseDiskCounters c, long reconnects) => new()
    {
        Reads = Interlocked.Read(ref c.Reads),
        Writes = Interlocked.Read(ref c.Writes),
        Flushes = Interlocked.Read(ref c.Flushes),
        Zeroes = Interlocked.Read(ref c.Zeroes),
        BytesRead = Interlocked.Read(ref c.BytesRead),
        BytesWritten = Interlocked.Read(ref c.BytesWritten),
        Errors = Interlocked.Read(ref c.Errors),
        InFlight = Interlocked.Read(ref c.InFlight),
        PeakInFlight = Interlocked.Read(ref c.PeakInFlight),
        Reconnects = reconnects,
    };
}
