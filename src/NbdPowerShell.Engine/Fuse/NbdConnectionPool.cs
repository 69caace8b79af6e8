using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// <see cref="INbdBlockIo"/> over a fixed set of <see cref="NbdNegotiatedConnection"/>s, each carrying one request at a
/// time: a request takes an idle connection, or waits for one. So at most <see cref="Connections"/> requests are in
/// flight, and more than one only where the export allows multi-conn (the caller checks that).
/// A connection that breaks is closed, and the request is retried once on a fresh connection to the same export
/// (server restarts, dropped links); a plain error reply from the server is not retried.
/// </summary>
internal sealed class NbdConnectionPool : INbdBlockIo
{
    /// <summary>WRITE_ZEROES lengths are 32-bit on the wire; 1 GiB pieces stay aligned to every block size.</summary>
    private const long ZeroChunk = 1L << 30;

    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(10);

    private readonly ConcurrentQueue<NbdNegotiatedConnection?> _idle = new();
    /// <summary>Every open connection, idle or busy, so that a dispose can cut off requests that never finish.</summary>
    private readonly ConcurrentDictionary<NbdNegotiatedConnection, byte> _open = new();
    private readonly SemaphoreSlim _available;
    private readonly Func<CancellationToken, Task<NbdNegotiatedConnection>> _reconnect;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _closing = new();
    private long _reconnects;
    private int _disposed;

    public NbdUri Uri { get; }
    public long Size { get; }
    public TransmissionFlags Flags { get; }
    public int Connections { get; }
    /// <summary>Connections opened again after one broke.</summary>
    public long Reconnects => Interlocked.Read(ref _reconnects);

    /// <param name="connections">Negotiated to the same export; the pool owns and closes them.</param>
    /// <param name="reconnect">Opens one more connection to that export (same URI and client options).</param>
    public NbdConnectionPool(IReadOnlyList<NbdNegotiatedConnection> connections, Func<CancellationToken, Task<NbdNegotiatedConnection>> reconnect, ILogger logger)
    {
        if (connections.Count == 0) throw new ArgumentException("At least one connection is needed.", nameof(connections));
        var first = connections[0];
        Uri = first.Uri;
        Size = first.Size;
        Flags = first.Flags;
        Connections = connections.Count;
        foreach (var c in connections)
        {
            _idle.Enqueue(c);
            _open.TryAdd(c, 0);
        }
        _available = new SemaphoreSlim(connections.Count, connections.Count);
        _reconnect = reconnect;
        _logger = logger;
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) =>
        RunAsync(new Request(RequestKind.Read, offset, buffer.Length, buffer, default, false), ct);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct = default) =>
        RunAsync(new Request(RequestKind.Write, offset, data.Length, default, data, false), ct);

    public ValueTask FlushAsync(CancellationToken ct = default) =>
        Flags.HasFlag(TransmissionFlags.SendFlush) ? RunAsync(new Request(RequestKind.Flush, 0, 0, default, default, false), ct) : default;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayPunch, CancellationToken ct = default)
    {
        for (long done = 0; done < length; done += ZeroChunk)
            await RunAsync(new Request(RequestKind.WriteZeroes, offset + done, Math.Min(ZeroChunk, length - done), default, default, mayPunch), ct).ConfigureAwait(false);
    }

    private enum RequestKind { Read, Write, Flush, WriteZeroes }

    private readonly record struct Request(RequestKind Kind, long Offset, long Length, Memory<byte> Into, ReadOnlyMemory<byte> From, bool MayPunch);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RunAsync(Request request, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        await _available.WaitAsync(ct).ConfigureAwait(false);
        _idle.TryDequeue(out var connection); // a permit guarantees an entry (possibly null: a slot to reopen)
        try
        {
            for (int attempt = 0; ; attempt++)
            {
                connection ??= await ReopenAsync(ct).ConfigureAwait(false);
                try
                {
                    await SendAsync(connection, request, ct).ConfigureAwait(false);
                    return;
                }
                catch (Exception e) when (attempt == 0 && IsBroken(connection, e))
                {
                    _logger.LogWarning("Connection to {Uri} broke during {Kind} at {Offset} ({Message}); retrying on a new connection", Uri, request.Kind, request.Offset, e.Message);
                    await CloseAsync(connection).ConfigureAwait(false);
                    connection = null;
                }
            }
        }
        catch when (connection is not null && connection.Socket is null)
        {
            // The connection broke for good (or was cancelled half-way): give its slot back empty.
            await CloseAsync(connection).ConfigureAwait(false);
            connection = null;
            throw;
        }
        finally
        {
            _idle.Enqueue(connection);
            _available.Release();
        }
    }

    private static Task SendAsync(NbdNegotiatedConnection connection, Request request, CancellationToken ct) => request.Kind switch
    {
        RequestKind.Read => connection.ReadAsync(request.Offset, request.Into, ct),
        RequestKind.Write => connection.WriteAsync(request.Offset, request.From, fua: false, ct),
        RequestKind.Flush => connection.FlushAsync(ct),
        _ => connection.WriteZeroesAsync(request.Offset, (uint)request.Length, noHole: !request.MayPunch, ct),
    };

    /// <summary>Transport failures close the connection (its Socket becomes null); error replies leave it usable.</summary>
    private static bool IsBroken(NbdNegotiatedConnection connection, Exception e) =>
        connection.Socket is null && e is NbdConnectionException or IOException or SocketException or ObjectDisposedException;

    private async Task<NbdNegotiatedConnection> ReopenAsync(CancellationToken ct)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _closing.Token);
        var connection = await _reconnect(linked.Token).ConfigureAwait(false);
        if (connection.Size != Size || connection.Flags != Flags)
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new NbdConnectionException($"{Uri} changed after reconnecting: size {connection.Size} (was {Size}), flags {connection.Flags} (was {Flags}); the disk is no longer the same export.");
        }
        Interlocked.Increment(ref _reconnects);
        _open.TryAdd(connection, 0);
        _logger.LogInformation("Reconnected to {Uri}", Uri);
        return connection;
    }

    private async ValueTask CloseAsync(NbdNegotiatedConnection connection)
    {
        _open.TryRemove(connection, out _);
        try { await connection.DisposeAsync().ConfigureAwait(false); }
        catch (Exception e) when (e is IOException or SocketException or NbdClientException or ObjectDisposedException) { }
    }

    /// <summary>
    /// Lets requests in flight finish (for a bounded time, then cuts their connections), then sends NBD_CMD_DISC on
    /// every connection and closes it. Callers stop issuing requests first.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _closing.Cancel();
        var drained = Task.Run(async () => { for (int i = 0; i < Connections; i++) await _available.WaitAsync().ConfigureAwait(false); });
        if (await Task.WhenAny(drained, Task.Delay(DrainTimeout)).ConfigureAwait(false) != drained)
        {
            _logger.LogWarning("Requests to {Uri} did not finish within {Seconds} s; closing their connections", Uri, DrainTimeout.TotalSeconds);
            foreach (var c in _open.Keys) c.Dispose();
            await drained.ConfigureAwait(false);
        }
        while (_idle.TryDequeue(out var connection))
            if (connection is not null) await CloseAsync(connection).ConfigureAwait(false);
        foreach (var c in _open.Keys) await CloseAsync(c).ConfigureAwait(false);
        _closing.Dispose();
    }
}
