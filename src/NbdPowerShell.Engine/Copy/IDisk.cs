using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Copy;

/// <summary>
/// An open disk the copier and hasher work on: an NBD export (<see cref="NbdDisk"/>) or a local file or block
/// device (<see cref="LocalDisk"/>). Calls may come from many threads at once, for distinct ranges.
/// </summary>
public interface IDisk : IAsyncDisposable
{
    /// <summary>The URI or path, for messages and results.</summary>
    string Name { get; }

    long Size { get; }

    bool IsReadOnly { get; }

    /// <summary>True when <see cref="GetExtentsAsync"/> reports real holes (otherwise everything is data).</summary>
    bool ReportsExtents { get; }

    /// <summary>Offsets and lengths of requests should be multiples of this.</summary>
    int Alignment { get; }

    /// <summary>The largest read or write worth one request.</summary>
    int MaximumRequestSize { get; }

    /// <summary>How many requests this disk can usefully serve at once (connections × pipelining, or local parallelism).</summary>
    int Parallelism { get; }

    /// <summary>Connections in use (1 for local disks).</summary>
    int Connections { get; }

    /// <summary>
    /// True when the whole disk is known to read as zeroes right now (a file just created or punched, or an export
    /// whose block status says so), so a copy need not zero its holes.
    /// </summary>
    bool IsZeroed { get; }

    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct);

    /// <summary>Makes the range read as zeroes the cheapest way the disk offers (punch, WRITE_ZEROES, or writing zeroes).</summary>
    ValueTask ZeroAsync(long offset, long length, CancellationToken ct);

    /// <summary>Appends extents describing the range from <paramref name="offset"/> on; may cover less than asked, never nothing.</summary>
    ValueTask GetExtentsAsync(long offset, long length, List<Extent> extents, CancellationToken ct);

    /// <summary>Makes everything written so far durable.</summary>
    ValueTask FlushAsync(CancellationToken ct);

    /// <summary>Fails whatever is in flight at once (Ctrl+C): connections close without waiting.</summary>
    void Abort();
}
