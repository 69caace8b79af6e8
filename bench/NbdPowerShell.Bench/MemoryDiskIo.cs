using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Bench;

/// <summary>
/// A disk in this process's memory behind the FUSE server, with no NBD in between: "fuse-attach --memory SIZE"
/// measures what the FUSE server and the loop device cost on their own, the ceiling an NBD client can approach.
/// Requests complete synchronously on the FUSE reader threads.
/// </summary>
internal sealed class MemoryDiskIo : INbdBlockIo
{
    private readonly byte[] _bytes;

    public MemoryDiskIo(long size)
    {
        // Touch every page now, so page faults of a fresh allocation do not count as I/O cost.
        _bytes = GC.AllocateUninitializedArray<byte>(checked((int)size));
        _bytes.AsSpan().Fill(0);
    }

    public NbdUri Uri { get; } = NbdUri.ForUnix("/dev/null", "memory");
    public long Size => _bytes.LongLength;
    public TransmissionFlags Flags => TransmissionFlags.HasFlags | TransmissionFlags.SendFlush | TransmissionFlags.SendWriteZeroes;
    public int Connections => 0;
    public long Reconnects => 0;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        _bytes.AsSpan(checked((int)offset), buffer.Length).CopyTo(buffer.Span);
        return default;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        data.Span.CopyTo(_bytes.AsSpan(checked((int)offset)));
        return default;
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => default;

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayPunch, CancellationToken ct = default)
    {
        _bytes.AsSpan(checked((int)offset), checked((int)length)).Clear();
        return default;
    }

    public ValueTask DisposeAsync() => default;
}
