using System.Runtime.CompilerServices;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// Block I/O on one NBD export through a pool of pipelined connections: read, write, flush, trim, write-zeroes
/// and block status on byte offsets, from any number of threads at once.
/// <para>
/// <b>Connections.</b> <see cref="ConnectAsync"/> opens one connection, and up to
/// <see cref="NbdBlockClientOptions.Connections"/> when the server advertises CAN_MULTI_CONN (then a FLUSH on
/// any connection covers the writes of all, so the pool may spread requests freely). Each request goes to the
/// connection with the fewest requests in flight.
/// </para>
/// <para>
/// <b>Requests.</b> Every call sends its request(s) before it returns and completes when the server answered.
/// Many requests are in flight per connection and replies may come back in any order. Reads and writes larger
/// than <see cref="MaximumRequestSize"/> and zero/trim ranges over 1 GiB are split into several requests sent at
/// once. The returned <see cref="ValueTask"/> must be awaited exactly once; until then the request owns the
/// caller's buffer. A steady stream of requests allocates nothing: request slots, headers and completion
/// objects are reused.
/// </para>
/// <para>
/// <b>Replies.</b> Structured replies are negotiated (unless <see cref="NbdBlockClientOptions.BlockStatus"/> is
/// off), so reads of holes come back as hole chunks and cost no data on the wire, and
/// <see cref="BlockStatusAsync"/> reports base:allocation extents. Servers without structured replies work with
/// simple replies; <see cref="SupportsBlockStatus"/> is then false.
/// </para>
/// <para>
/// <b>Errors.</b> A request the server refuses fails with <see cref="NbdCommandException"/> (its
/// <see cref="NbdCommandException.Error"/> is the errno-like value) and the connection carries on. A connection
/// that breaks (closed, reset, protocol violation) fails every request in flight on it with
/// <see cref="NbdConnectionException"/> or <see cref="NbdProtocolException"/>, and so does every later request
/// that lands on it. Arguments outside the export throw <see cref="ArgumentOutOfRangeException"/>; commands the
/// server does not advertise throw <see cref="NotSupportedException"/>; writes to a read-only export throw
/// <see cref="InvalidOperationException"/>. There is no per-request timeout: TCP keepalive and
/// TCP_USER_TIMEOUT end a connection to a vanished server after about two minutes.
/// </para>
/// <para>
/// <b>Cancellation.</b> A token is honoured while a call waits for a free request slot. A request already sent
/// cannot be withdrawn in NBD; to give up on everything in flight call <see cref="Abort"/>, which fails all
/// requests at once and closes the connections.
/// </para>
/// <para>
/// <b>Reconnecting.</b> With <see cref="NbdBlockClientOptions.Reconnect"/> a broken connection is replaced by a
/// fresh one to the same export, and each request that failed with it is sent once more on the new one.
/// </para>
/// </summary>
public sealed class NbdBlockClient : IAsyncDisposable, IDisposable
{
    /// <summary>Reads and writes above this are split; 32 MiB is the payload every server must accept.</summary>
    public const int DefaultMaximumRequestSize = 32 * 1024 * 1024;

    /// <summary>Zero and trim ranges above this are split; servers need not take anything near 4 GiB.</summary>
    private const long MaxRangeRequest = 1L << 30;

    /// <summary>Replaced as a whole (copy on write) when a broken connection is swapped for a fresh one.</summary>
    private PipelinedConnection[] _connections;
    private readonly Func<NbdClientOptions, CancellationToken, Task<NbdNegotiatedConnection>> _connect;
    private readonly NbdClientOptions _clientOptions;
    private readonly NbdBlockClientOptions _options;
    /// <summary>One reconnect at a time, so requests failing together on one connection open one replacement.</summary>
    private readonly SemaphoreSlim _reconnectGate = new(1, 1);
    private long _reconnects;
    private int _disposed;
    private int _next;

    private NbdBlockClient(PipelinedConnection[] connections, bool isTls,
        Func<NbdClientOptions, CancellationToken, Task<NbdNegotiatedConnection>> connect, NbdClientOptions clientOptions, NbdBlockClientOptions options)
    {
        _connections = connections;
        _connect = connect;
        _clientOptions = clientOptions;
        _options = options;
        var first = connections[0];
        Uri = first.Uri;
        Export = first.Export;
        IsTls = isTls;
        int? max = Export.MaximumBlockSize;
        MaximumRequestSize = max is > 0 ? Math.Min(max.Value, DefaultMaximumRequestSize) : DefaultMaximumRequestSize;
        MinimumBlockSize = Export.MinimumBlockSize is > 0 ? Export.MinimumBlockSize.Value : 1;
        PreferredBlockSize = Export.PreferredBlockSize is > 0 ? Export.PreferredBlockSize.Value : NbdLimits.PreferredBlockSize;
    }

    /// <summary>The export's URI (nbds:// when TLS is in use).</summary>
    public NbdUri Uri { get; }

    /// <summary>What the server said about the export during negotiation.</summary>
    public NbdExportInfo Export { get; }

    public long Size => Export.Size ?? 0;
    public TransmissionFlags Flags => Export.Flags ?? TransmissionFlags.None;
    public bool IsReadOnly => Flags.HasFlag(TransmissionFlags.ReadOnly);
    public bool CanMultiConn => Flags.HasFlag(TransmissionFlags.CanMultiConn);
    public bool CanFlush => Flags.HasFlag(TransmissionFlags.SendFlush);
    public bool CanFua => Flags.HasFlag(TransmissionFlags.SendFua);
    public bool CanTrim => Flags.HasFlag(TransmissionFlags.SendTrim);
    public bool CanWriteZeroes => Flags.HasFlag(TransmissionFlags.SendWriteZeroes);
    public bool CanFastZero => CanWriteZeroes && Flags.HasFlag(TransmissionFlags.SendFastZero);
    public bool IsTls { get; }

    /// <summary>True when the server agreed to the base:allocation meta context (needs structured replies).</summary>
    public bool SupportsBlockStatus => _connections[0].SupportsBlockStatus;

    /// <summary>True when structured replies were negotiated.</summary>
    public bool StructuredReplies => _connections[0].StructuredReplies;

    /// <summary>Connections really open (1 when the server does not allow multi-conn).</summary>
    public int ConnectionCount => _connections.Length;

    /// <summary>Connections opened again after one broke (only with <see cref="NbdBlockClientOptions.Reconnect"/>).</summary>
    public long Reconnects => Interlocked.Read(ref _reconnects);

    /// <summary>The server's minimum block size (1 when it named none): offsets and lengths should be multiples of it.</summary>
    public int MinimumBlockSize { get; }

    /// <summary>The server's preferred block size (4096 when it named none).</summary>
    public int PreferredBlockSize { get; }

    /// <summary>The largest read or write sent as one request: the server's maximum, at most 32 MiB.</summary>
    public int MaximumRequestSize { get; }

    /// <summary>Requests in flight over all connections.</summary>
    public int InFlight
    {
        get
        {
            int n = 0;
            foreach (var c in Volatile.Read(ref _connections))
                n += c.InFlight;
            return n;
        }
    }

    /// <summary>
    /// Connects to <paramref name="uri"/> (nbd://, nbds://, nbd+unix://, nbds+unix://) and opens the connection pool.
    /// Connection and negotiation failures throw the <see cref="NbdClient.ConnectAsync(NbdUri, NbdClientOptions?, CancellationToken)"/> exceptions.
    /// </summary>
    public static Task<NbdBlockClient> ConnectAsync(NbdUri uri, NbdBlockClientOptions? options = null, CancellationToken ct = default) =>
        OpenAsync((clientOptions, token) => NbdClient.ConnectAsync(uri, clientOptions, token), options, ct);

    /// <summary>
    /// Opens the pool over connections that <paramref name="connect"/> makes and negotiates with the options it is
    /// given (for example through an in-process socket pair with <see cref="NbdClient.NegotiateAsync"/>). It is called
    /// once, and again for each further connection when the server allows multi-conn.
    /// </summary>
    public static async Task<NbdBlockClient> OpenAsync(Func<NbdClientOptions, CancellationToken, Task<NbdNegotiatedConnection>> connect,
        NbdBlockClientOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(connect);
        options ??= NbdBlockClientOptions.Default;
        if (options.Connections is < 1 or > 16) throw new ArgumentOutOfRangeException(nameof(options), options.Connections, "Connections must be 1..16.");
        if (options.MaxInFlightPerConnection is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(options), options.MaxInFlightPerConnection, "MaxInFlightPerConnection must be 1..1024.");
        var clientOptions = options.Client with
        {
            StructuredReplies = options.BlockStatus,
            MetaContexts = options.BlockStatus ? [NbdMetaContext.BaseAllocation] : [],
        };

        var first = await connect(clientOptions, ct).ConfigureAwait(false);
        bool isTls = first.IsTls;
        var opened = new List<PipelinedConnection>();
        try
        {
            opened.Add(PipelinedConnection.Start(first, options.MaxInFlightPerConnection, options.InlineCompletions));
        }
        catch
        {
            first.Dispose();
            throw;
        }
        if (options.Connections > 1 && first.CanMultiConn)
        {
            var more = Enumerable.Range(1, options.Connections - 1).Select(_ => connect(clientOptions, ct)).ToList();
            foreach (var task in more)
            {
                NbdNegotiatedConnection extra;
                try { extra = await task.ConfigureAwait(false); }
                catch (Exception e) when (e is NbdClientException or IOException)
                {
                    continue; // the pool works with fewer connections; ConnectionCount tells how many
                }
                catch
                {
                    foreach (var c in opened) c.Dispose();
                    throw;
                }
                // Every connection must see the same export, or the pool would mix two disks.
                if (extra.Size != first.Size || extra.Flags != first.Flags || extra.StructuredReplies != first.StructuredReplies
                    || extra.MetaContexts.Count != first.MetaContexts.Count)
                {
                    extra.Dispose();
                    continue;
                }
                try { opened.Add(PipelinedConnection.Start(extra, options.MaxInFlightPerConnection, options.InlineCompletions)); }
                catch (IOException) { extra.Dispose(); }
            }
        }
        return new NbdBlockClient(opened.ToArray(), isTls, connect, clientOptions, options);
    }

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>. Holes read as zeroes.</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.Length == 0)
            return ValueTask.CompletedTask;
        if (buffer.Length <= MaximumRequestSize)
            return Send(NbdCommand.Read, NbdCommandFlags.None, offset, (uint)buffer.Length, default, buffer, null, ct);
        return ReadSplitAsync(offset, buffer, ct);
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; with <paramref name="fua"/> it is durable when this completes.</summary>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken ct = default)
    {
        CheckWritable(NbdCommand.Write);
        CheckRange(offset, data.Length);
        if (fua) CheckAdvertised(CanFua, "FUA");
        if (data.Length == 0)
            return ValueTask.CompletedTask;
        var flags = fua ? NbdCommandFlags.Fua : NbdCommandFlags.None;
        if (data.Length <= MaximumRequestSize)
            return Send(NbdCommand.Write, flags, offset, (uint)data.Length, data, default, null, ct);
        return WriteSplitAsync(offset, data, flags, ct);
    }

    /// <summary>Makes every write that completed before this call durable (on all connections: multi-conn guarantees it).</summary>
    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        CheckAdvertised(CanFlush, "FLUSH");
        return Send(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default, null, ct);
    }

    /// <summary>Tells the server the range is unused (a hint: its content afterwards is unspecified).</summary>
    public ValueTask TrimAsync(long offset, long length, bool fua = false, CancellationToken ct = default)
    {
        CheckWritable(NbdCommand.Trim);
        CheckAdvertised(CanTrim, "TRIM");
        CheckRange(offset, length);
        return RangeCommandAsync(NbdCommand.Trim, fua ? NbdCommandFlags.Fua : NbdCommandFlags.None, offset, length, ct);
    }

    /// <summary>
    /// Makes the range read as zeroes without sending them. The server may punch holes unless
    /// <paramref name="noHole"/>. With <paramref name="fastOnly"/> (needs <see cref="CanFastZero"/>) a server that
    /// could only do it slowly fails at once with <see cref="NbdError.NotSupported"/> instead.
    /// </summary>
    public ValueTask WriteZeroesAsync(long offset, long length, bool noHole = false, bool fastOnly = false, bool fua = false, CancellationToken ct = default)
    {
        CheckWritable(NbdCommand.WriteZeroes);
        CheckAdvertised(CanWriteZeroes, "WRITE_ZEROES");
        if (fastOnly) CheckAdvertised(CanFastZero, "FAST_ZERO");
        if (fua) CheckAdvertised(CanFua, "FUA");
        CheckRange(offset, length);
        var flags = (noHole ? NbdCommandFlags.NoHole : 0) | (fastOnly ? NbdCommandFlags.FastZero : 0) | (fua ? NbdCommandFlags.Fua : 0);
        return RangeCommandAsync(NbdCommand.WriteZeroes, flags, offset, length, ct);
    }

    /// <summary>
    /// Appends base:allocation extents that describe the range from <paramref name="offset"/> on, in order. The
    /// server may describe less than <paramref name="length"/> (never nothing): call again from where the extents
    /// end. Needs <see cref="SupportsBlockStatus"/>.
    /// </summary>
    public ValueTask BlockStatusAsync(long offset, long length, List<Extent> extents, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(extents);
        if (!SupportsBlockStatus)
            throw new NotSupportedException($"{Uri} did not agree to the base:allocation meta context, so it cannot report block status.");
        CheckRange(offset, length);
        if (length == 0)
            return ValueTask.CompletedTask;
        uint asked = (uint)Math.Min(length, MaxRangeRequest);
        return Send(NbdCommand.BlockStatus, NbdCommandFlags.None, offset, asked, default, default, extents, ct);
    }

    /// <summary>
    /// Fails every request in flight at once and shuts the connections down (no goodbye to the server). Returns
    /// without waiting, so it is safe from a cancellation callback; dispose the client afterwards.
    /// </summary>
    public void Abort()
    {
        Volatile.Write(ref _disposed, 1); // a request failing now is not retried on a new connection
        foreach (var c in Volatile.Read(ref _connections))
            c.Abort();
    }

    /// <summary>Waits briefly for requests in flight, says goodbye (NBD_CMD_DISC) on every connection and closes them.</summary>
    public ValueTask DisposeAsync()
    {
        Volatile.Write(ref _disposed, 1);
        foreach (var c in Volatile.Read(ref _connections))
            c.Disconnect(TimeSpan.FromSeconds(5));
        return ValueTask.CompletedTask;
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    /// <summary>Sends one request on the least loaded connection; with reconnecting on, a request its broken connection failed goes once more to a fresh one.</summary>
    private ValueTask Send(NbdCommand command, NbdCommandFlags flags, long offset, uint length,
        ReadOnlyMemory<byte> payload, Memory<byte> readInto, List<Extent>? extents, CancellationToken ct)
    {
        var connection = Pick();
        var task = connection.Submit(command, flags, offset, length, payload, readInto, extents, ct);
        if (!_options.Reconnect || task.IsCompletedSuccessfully)
            return task;
        return RetryOnFreshConnectionAsync(task, connection, command, flags, offset, length, payload, readInto, extents, ct);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RetryOnFreshConnectionAsync(ValueTask sent, PipelinedConnection connection, NbdCommand command, NbdCommandFlags flags,
        long offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readInto, List<Extent>? extents, CancellationToken ct)
    {
        try
        {
            await sent.ConfigureAwait(false);
            return;
        }
        catch (Exception e) when (connection.Failure is not null && Volatile.Read(ref _disposed) == 0
            && e is NbdConnectionException or NbdProtocolException or IOException)
        {
            // The connection is gone, not the request refused: the reader has let go of the buffers, so they can be sent again.
        }
        var fresh = await ReplaceAsync(connection, ct).ConfigureAwait(false);
        extents?.Clear();
        await fresh.Submit(command, flags, offset, length, payload, readInto, extents, ct).ConfigureAwait(false);
    }

    /// <summary>Puts a fresh connection to the same export in the place of <paramref name="broken"/> (unless another request already did).</summary>
    private async Task<PipelinedConnection> ReplaceAsync(PipelinedConnection broken, CancellationToken ct)
    {
        await _reconnectGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var current = Volatile.Read(ref _connections);
            int index = Array.IndexOf(current, broken);
            if (index < 0)
                return Pick(); // replaced while this request waited for the gate
            var negotiated = await _connect(_clientOptions, ct).ConfigureAwait(false);
            if (negotiated.Size != Size || negotiated.Flags != Flags || negotiated.StructuredReplies != StructuredReplies || Volatile.Read(ref _disposed) != 0)
            {
                negotiated.Dispose();
                ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
                throw new NbdConnectionException($"{Uri} changed after reconnecting: size {negotiated.Size} (was {Size}), flags {negotiated.Flags} (was {Flags}); the disk is no longer the same export.");
            }
            var fresh = PipelinedConnection.Start(negotiated, _options.MaxInFlightPerConnection, _options.InlineCompletions);
            var next = (PipelinedConnection[])current.Clone();
            next[index] = fresh;
            Volatile.Write(ref _connections, next);
            if (Volatile.Read(ref _disposed) != 0)
                fresh.Dispose(); // disposed while publishing: the dispose may not have seen it
            Interlocked.Increment(ref _reconnects);
            broken.Dispose();
            return fresh;
        }
        finally
        {
            _reconnectGate.Release();
        }
    }

    private PipelinedConnection Pick()
    {
        var connections = Volatile.Read(ref _connections);
        if (connections.Length == 1)
            return connections[0];
        // Least loaded first, starting the scan at a moving index so ties spread out.
        int start = (int)((uint)Interlocked.Increment(ref _next) % (uint)connections.Length);
        var best = connections[start];
        int load = best.InFlight;
        for (int i = 1; i < connections.Length && load > 0; i++)
        {
            var c = connections[(start + i) % connections.Length];
            int l = c.InFlight;
            if (l < load && c.Failure is null)
            {
                best = c;
                load = l;
            }
        }
        return best;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadSplitAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        int pieces = (buffer.Length + MaximumRequestSize - 1) / MaximumRequestSize;
        var tasks = new ValueTask[pieces];
        for (int i = 0; i < pieces; i++)
        {
            int start = i * MaximumRequestSize;
            int n = Math.Min(MaximumRequestSize, buffer.Length - start);
            tasks[i] = SubmitOrFail(NbdCommand.Read, NbdCommandFlags.None, offset + start, (uint)n, default, buffer.Slice(start, n), ct);
        }
        await AwaitAllAsync(tasks).ConfigureAwait(false);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteSplitAsync(long offset, ReadOnlyMemory<byte> data, NbdCommandFlags flags, CancellationToken ct)
    {
        int pieces = (data.Length + MaximumRequestSize - 1) / MaximumRequestSize;
        var tasks = new ValueTask[pieces];
        for (int i = 0; i < pieces; i++)
        {
            int start = i * MaximumRequestSize;
            int n = Math.Min(MaximumRequestSize, data.Length - start);
            tasks[i] = SubmitOrFail(NbdCommand.Write, flags, offset + start, (uint)n, data.Slice(start, n), default, ct);
        }
        await AwaitAllAsync(tasks).ConfigureAwait(false);
    }

    private ValueTask RangeCommandAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length, CancellationToken ct)
    {
        if (length == 0)
            return ValueTask.CompletedTask;
        if (length <= MaxRangeRequest)
            return Send(command, flags, offset, (uint)length, default, default, null, ct);
        return RangeSplitAsync(command, flags, offset, length, ct);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RangeSplitAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length, CancellationToken ct)
    {
        var tasks = new ValueTask[(int)((length + MaxRangeRequest - 1) / MaxRangeRequest)];
        for (int i = 0; i < tasks.Length; i++)
        {
            long start = i * MaxRangeRequest;
            tasks[i] = SubmitOrFail(command, flags, offset + start, (uint)Math.Min(MaxRangeRequest, length - start), default, default, ct);
        }
        await AwaitAllAsync(tasks).ConfigureAwait(false);
    }

    /// <summary>Submits, turning a synchronous throw (cancellation while waiting for a slot) into a faulted task so every piece is awaited.</summary>
    private ValueTask SubmitOrFail(NbdCommand command, NbdCommandFlags flags, long offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readInto, CancellationToken ct)
    {
        try { return Send(command, flags, offset, length, payload, readInto, null, ct); }
        catch (Exception e) { return ValueTask.FromException(e); }
    }

    /// <summary>Awaits every piece, even after one failed (each owns part of the caller's buffer until it completes), then throws the first failure.</summary>
    private static async ValueTask AwaitAllAsync(ValueTask[] tasks)
    {
        Exception? first = null;
        foreach (var task in tasks)
        {
            try { await task.ConfigureAwait(false); }
            catch (Exception e) { first ??= e; }
        }
        if (first is not null)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"The range of {length} bytes at offset {offset} lies outside {Uri} ({Size} bytes).");
    }

    private void CheckWritable(NbdCommand command)
    {
        if (IsReadOnly)
            throw new InvalidOperationException($"{Uri} is read-only; {command} is not allowed.");
    }

    private void CheckAdvertised(bool advertised, string what)
    {
        if (!advertised)
            throw new NotSupportedException($"{Uri} does not advertise {what}.");
    }
}
