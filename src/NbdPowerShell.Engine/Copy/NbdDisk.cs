using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Copy;

/// <summary>An NBD export as a disk, over a pool of pipelined connections.</summary>
public sealed class NbdDisk : IDisk
{
    /// <summary>Requests each connection keeps in flight; what nbdcopy uses too.</summary>
    internal const int InFlightPerConnection = 64;

    /// <summary>Requests the copier gives each connection: enough to keep the server's reply stream going.</summary>
    private const int LanesPerConnection = 4;

    // Zeroes to send when the server has no WRITE_ZEROES; never written to.
    private static readonly byte[] s_zeroes = new byte[1 << 20];

    private volatile bool _fastZeroWorks;

    private NbdDisk(NbdBlockClient client)
    {
        Client = client;
        _fastZeroWorks = client.CanFastZero;
    }

    public NbdBlockClient Client { get; }

    public string Name => Client.Uri.ToString();
    public long Size => Client.Size;
    public bool IsReadOnly => Client.IsReadOnly;
    public bool ReportsExtents => Client.SupportsBlockStatus;
    public int Alignment => Client.MinimumBlockSize;
    public int MaximumRequestSize => Client.MaximumRequestSize;
    public int Parallelism => Client.ConnectionCount * LanesPerConnection;
    public int Connections => Client.ConnectionCount;
    public bool IsZeroed { get; private set; }

    /// <summary>
    /// Connects with up to <paramref name="connections"/> connections (one when the server does not allow
    /// multi-conn). Replies complete on the connections' reader threads: the copier's continuations are short.
    /// </summary>
    public static async Task<NbdDisk> OpenAsync(NbdUri uri, int connections, NbdClientOptions clientOptions, CancellationToken ct)
    {
        var client = await NbdBlockClient.ConnectAsync(uri, new NbdBlockClientOptions
        {
            Connections = connections,
            MaxInFlightPerConnection = InFlightPerConnection,
            Client = clientOptions,
            InlineCompletions = true,
        }, ct).ConfigureAwait(false);
        return new NbdDisk(client);
    }

    /// <summary>
    /// Asks block status whether the whole export reads as zeroes (a fresh nbdkit memory disk, an empty sparse
    /// file); sets <see cref="IsZeroed"/>. Stops at the first extent that is not known zero.
    /// </summary>
    public async Task<bool> CheckZeroedAsync(CancellationToken ct)
    {
        if (!ReportsExtents)
            return false;
        var extents = new List<Extent>();
        long at = 0;
        while (at < Size)
        {
            extents.Clear();
            await Client.BlockStatusAsync(at, Size - at, extents, ct).ConfigureAwait(false);
            foreach (var e in extents)
            {
                if (!e.Flags.HasFlag(ExtentFlags.Zero))
                    return false;
                at += e.Length;
            }
        }
        IsZeroed = true;
        return true;
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct) => Client.ReadAsync(offset, buffer, ct);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct) => Client.WriteAsync(offset, data, ct: ct);

    public ValueTask ZeroAsync(long offset, long length, CancellationToken ct)
    {
        if (!Client.CanWriteZeroes)
            return WriteZeroBytesAsync(offset, length, ct);
        if (_fastZeroWorks)
            return FastZeroAsync(offset, length, ct);
        return Client.WriteZeroesAsync(offset, length, ct: ct);
    }

    /// <summary>FAST_ZERO first; a server that could only zero slowly says ENOTSUP, and then plain WRITE_ZEROES (still no data on the wire).</summary>
    private async ValueTask FastZeroAsync(long offset, long length, CancellationToken ct)
    {
        try
        {
            await Client.WriteZeroesAsync(offset, length, fastOnly: true, ct: ct).ConfigureAwait(false);
            return;
        }
        catch (NbdCommandException e) when (e.Error == NbdError.NotSupported)
        {
            _fastZeroWorks = false;
        }
        await Client.WriteZeroesAsync(offset, length, ct: ct).ConfigureAwait(false);
    }

    private async ValueTask WriteZeroBytesAsync(long offset, long length, CancellationToken ct)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, s_zeroes.Length);
            await Client.WriteAsync(offset, s_zeroes.AsMemory(0, n), ct: ct).ConfigureAwait(false);
            offset += n;
            length -= n;
        }
    }

    public ValueTask GetExtentsAsync(long offset, long length, List<Extent> extents, CancellationToken ct)
    {
        if (ReportsExtents)
            return Client.BlockStatusAsync(offset, length, extents, ct);
        extents.Add(new Extent(length, ExtentFlags.Data));
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct) => Client.CanFlush ? Client.FlushAsync(ct) : ValueTask.CompletedTask;

    public void Abort() => Client.Abort();

    public ValueTask DisposeAsync() => Client.DisposeAsync();
}
