using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// The NBD export as the FUSE server uses it: positional reads and writes, flush and zeroing, all of which may be
/// called concurrently from many requests at once, completing synchronously or not. Implemented by
/// <see cref="NbdBlockClientIo"/> over the pipelined client (and in the benchmark by a disk in memory).
/// </summary>
internal interface INbdBlockIo : IAsyncDisposable
{
    NbdUri Uri { get; }
    long Size { get; }
    TransmissionFlags Flags { get; }
    /// <summary>Connections to the server (open or to be reopened).</summary>
    int Connections { get; }
    /// <summary>Connections opened again after one broke.</summary>
    long Reconnects { get; }

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/>; the range lies inside the export.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct = default);

    /// <summary>Makes every write completed so far durable (NBD_CMD_FLUSH); a no-op when the server has no FLUSH.</summary>
    ValueTask FlushAsync(CancellationToken ct = default);

    /// <summary>NBD_CMD_WRITE_ZEROES over any length; <paramref name="mayPunch"/> false sets NO_HOLE.</summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool mayPunch, CancellationToken ct = default);
}
