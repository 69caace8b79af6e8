using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// The FUSE server's view of an export (<see cref="INbdBlockIo"/>) on the pipelined <see cref="NbdBlockClient"/>:
/// every request the kernel has in flight is in flight at the server too, replies complete out of order.
/// The client must be opened with <see cref="NbdBlockClientOptions.Reconnect"/> (a restarted server must not
/// break the disk) and may use inline completions: the FUSE server's continuations only write a reply to
/// /dev/fuse and never wait for another request.
/// </summary>
internal sealed class NbdBlockClientIo(NbdBlockClient client) : INbdBlockIo
{
    public NbdUri Uri => client.Uri;
    public long Size => client.Size;
    public TransmissionFlags Flags => client.Flags;
    public int Connections => client.ConnectionCount;
    public long Reconnects => client.Reconnects;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => client.ReadAsync(offset, buffer, ct);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct = default) => client.WriteAsync(offset, data, fua: false, ct);

    public ValueTask FlushAsync(CancellationToken ct = default) => client.CanFlush ? client.FlushAsync(ct) : default;

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayPunch, CancellationToken ct = default) =>
        client.WriteZeroesAsync(offset, length, noHole: !mayPunch, ct: ct);

    public ValueTask DisposeAsync() => client.DisposeAsync();
}
