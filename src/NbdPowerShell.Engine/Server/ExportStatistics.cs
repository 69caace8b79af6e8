namespace NbdPowerShell.Engine.Server;

/// <summary>Live counters, updated with Interlocked by the connections and read without stopping them.</summary>
internal sealed class IoCounters
{
    public long Reads, Writes, Flushes, Trims, Zeroes, BlockStatus, Errors, BytesRead, BytesWritten;

    public void CountRead(long bytes)
    {
        Interlocked.Increment(ref Reads);
        Interlocked.Add(ref BytesRead, bytes);
    }

    public void CountWrite(long bytes)
    {
        Interlocked.Increment(ref Writes);
        Interlocked.Add(ref BytesWritten, bytes);
    }

    /// <summary>Adds another set's current values (for sums over connections).</summary>
    public void Add(IoCounters other)
    {
        Interlocked.Add(ref Reads, Volatile.Read(ref other.Reads));
        Interlocked.Add(ref Writes, Volatile.Read(ref other.Writes));
        Interlocked.Add(ref Flushes, Volatile.Read(ref other.Flushes));
        Interlocked.Add(ref Trims, Volatile.Read(ref other.Trims));
        Interlocked.Add(ref Zeroes, Volatile.Read(ref other.Zeroes));
        Interlocked.Add(ref BlockStatus, Volatile.Read(ref other.BlockStatus));
        Interlocked.Add(ref Errors, Volatile.Read(ref other.Errors));
        Interlocked.Add(ref BytesRead, Volatile.Read(ref other.BytesRead));
        Interlocked.Add(ref BytesWritten, Volatile.Read(ref other.BytesWritten));
    }

    public IoStatistics Snapshot() => new(
        Volatile.Read(ref Reads), Volatile.Read(ref Writes), Volatile.Read(ref Flushes), Volatile.Read(ref Trims),
        Volatile.Read(ref Zeroes), Volatile.Read(ref BlockStatus), Volatile.Read(ref Errors),
        Volatile.Read(ref BytesRead), Volatile.Read(ref BytesWritten));
}

/// <summary>Request counts and bytes moved.</summary>
public sealed record IoStatistics(
    long Reads, long Writes, long Flushes, long Trims, long Zeroes, long BlockStatus, long Errors,
    long BytesRead, long BytesWritten);

/// <summary>A point-in-time view of one client connection.</summary>
public sealed record ConnectionSnapshot(
    long Id, string ClientAddress, string ExportName, DateTimeOffset ConnectedAt, bool StructuredReplies, IoStatistics Io)
{
    /// <summary>The connection upgraded with STARTTLS.</summary>
    public bool Tls { get; init; }
}

/// <summary>A point-in-time view of one export.</summary>
public sealed record ExportSnapshot(
    string Name, string Description, string StoreDescription, long Size, bool IsReadOnly,
    Protocol.TransmissionFlags Flags, int MaxConnections, IReadOnlyList<string>? AllowedClients,
    DateTimeOffset AddedAt, long TotalConnections, IoStatistics Io, IReadOnlyList<ConnectionSnapshot> Connections);
