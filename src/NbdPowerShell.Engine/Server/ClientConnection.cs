using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// One client from accept to close. A dedicated thread negotiates, then reads requests
/// continuously. What never waits it runs itself (memory stores, file reads the page cache answers
/// at once), batching those replies (<see cref="ReplyBatch"/>); the rest goes to the connection's
/// worker threads. Replies go out through one <see cref="ReplyWriter"/> in completion order.
/// </summary>
internal sealed class ClientConnection
{
    private static long s_nextId;

    private readonly NbdServer _server;
    // The accepted socket: shutting it down ends the connection whatever runs on top of it (TLS included).
    private readonly NbdTransport _transport;
    // Set after negotiation, over the session's transport (the TLS one after STARTTLS).
    private ReplyWriter _writer = null!;
    // The reader's replies to the requests it runs itself; used by the reader thread only.
    private ReplyBatch _batch = null!;
    private readonly ILogger _log;
    private readonly int _maxInFlight;
    private readonly SemaphoreSlim _slots;
    private readonly Stack<NbdRequest> _pool = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private NegotiatedSession? _session;
    private volatile bool _stopping;
    /// <summary>Set by StopAsync: until when a client may read its last replies before the socket closes.</summary>
    private long _stopDrainUntilTicks;
    private int _disposed;

    public ClientConnection(NbdServer server, NbdTransport transport, ConnectionOrigin origin, ILogger log, int maxInFlight)
    {
        Id = Interlocked.Increment(ref s_nextId);
        _server = server;
        Origin = origin;
        _transport = transport;
        _log = log;
        _maxInFlight = maxInFlight;
        _slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        ClientAddress = Describe(transport.RemoteEndPoint);
    }

    public long Id { get; }
    /// <summary>The listener (and so the TLS rules) this client came through.</summary>
    public ConnectionOrigin Origin { get; }
    public string ClientAddress { get; }
    public EndPoint? RemoteEndPoint => _transport.RemoteEndPoint;
    public DateTimeOffset ConnectedAt { get; } = DateTimeOffset.UtcNow;
    /// <summary>
    /// This connection's counters, written only by its own threads; the export's figures are the
    /// sum over its connections, so connections to one export share no counter cache line.
    /// </summary>
    public IoCounters Counters { get; } = new();
    public Task Closed => _closed.Task;
    public bool InTransmission => _session != null;
    private int InFlight => _maxInFlight - _slots.CurrentCount;

    public void Start()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = $"nbd-conn-{Id}" };
        thread.Start();
    }

    public ConnectionSnapshot Snapshot() => new(
        Id, ClientAddress, _session?.Export.Name ?? "", ConnectedAt, _session?.StructuredReplies ?? false, Counters.Snapshot())
    {
        Tls = _session?.Tls ?? false,
    };

    private void Run()
    {
        try
        {
            _session = Negotiate();
            if (_session == null)
                return;
            _log.LogInformation("Client {Client} attached to export '{Export}' (structured replies: {Structured})",
                ClientAddress, _session.Export.Name, _session.StructuredReplies);
            Transmit(_session);
        }
        catch (EndOfStreamException)
        {
            _log.LogDebug("Client {Client} closed the connection", ClientAddress);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
        {
            _log.LogDebug("Client {Client} connection ended: {Message}", ClientAddress, e.Message);
        }
        catch (Exception e)
        {
            // Nothing a client sends may take the process down.
            _log.LogError(e, "Unexpected failure serving {Client}", ClientAddress);
        }
        finally
        {
            Close();
        }
    }

    private const int Negotiating = 0, Negotiated = 1, Expired = 2;
    private int _handshakeState;
    // The transport negotiation ended on (the TLS one after STARTTLS), disposed on close.
    private NbdTransport? _negotiatedTransport;

    private NegotiatedSession? Negotiate()
    {
        // The deadline closes the socket under a client that stalls mid-handshake: one that sends
        // nothing for a whole HandshakeTimeout. It measures silence, not the length of the handshake,
        // because a TLS handshake on a starved machine (a loaded CI runner, an emulated VM) can take
        // longer than any fixed limit while both sides keep making progress. Finishing and expiring
        // race for one state change, so a client that completes just in time is not dropped.
        long seen = _transport.BytesReceived;
        Timer? deadline = null;
        deadline = new Timer(_ =>
        {
            long now = _transport.BytesReceived;
            if (now != seen && Volatile.Read(ref _handshakeState) == Negotiating)
            {
                seen = now;
                try { deadline!.Change(_server.Options.HandshakeTimeout, Timeout.InfiniteTimeSpan); }
                catch (ObjectDisposedException) { }
                return;
            }
            if (Interlocked.CompareExchange(ref _handshakeState, Expired, Negotiating) == Negotiating)
            {
                _log.LogInformation("Client {Client} sent nothing for {Timeout}s while negotiating; dropping it",
                    ClientAddress, _server.Options.HandshakeTimeout.TotalSeconds);
                _transport.Shutdown();
            }
        }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        using var disposeDeadline = deadline;
        deadline.Change(_server.Options.HandshakeTimeout, Timeout.InfiniteTimeSpan);
        var negotiator = new OptionNegotiator(_server, this, _transport, new BufferedReader(_transport), _log);
        NegotiatedSession? session;
        try
        {
            session = negotiator.Run();
        }
        finally
        {
            _negotiatedTransport = negotiator.Transport;
        }
        if (Interlocked.CompareExchange(ref _handshakeState, Negotiated, Negotiating) != Negotiating)
        {
            session?.Export.Detach(this);
            return null;
        }
        return session;
    }

    private void Transmit(NegotiatedSession session)
    {
        var export = session.Export;
        var flags = export.FlagsFor(session.StructuredReplies);
        var reader = session.Reader;
        _writer = new ReplyWriter(session.Transport, _server.Options.FileReadSplicing);
        _batch = new ReplyBatch(_writer, _maxInFlight, Complete);
        reader.BeforeReceive = _batch.Flush;
        // Threads start on demand: a memory export whose requests all run inline never starts one.
        var workers = new RequestWorkers(_server.Options.WorkerThreads, _maxInFlight, $"nbd-conn-{Id}");
        try
        {
            ReadRequests(session, export, flags, reader, workers);
        }
        finally
        {
            // Replies to requests read before the end (DISC, EOF, a bad request) still go out.
            _batch.Flush();
            workers.Close();
        }
    }

    /// <summary>
    /// Memory reads from this size go to a worker; by default none do. A large reply handed to a
    /// worker was meant to put a second core on the send while the reader took in the next
    /// requests, but on two cores beside the client the workers contend for the cores and the reply
    /// lock: 1 MiB reads at QD 8 ran in 0.90x the wall time and 0.86x the CPU with the reader sending
    /// them itself, TLS too (docs/performance.md, round 6). Bench host --parallel-memory-read-minimum.
    /// </summary>
    internal static int ParallelMemoryReadMinimum = int.MaxValue;

    /// <summary>
    /// File reads up to this size are first tried on the reader from the page cache without
    /// waiting (RWF_NOWAIT); those that would wait go to a worker. No limit but the hole-aware
    /// structured reads (see <see cref="RequestExecutor.HoleAwareReadMinimum"/>): 1 MiB reads handed to
    /// the eight workers cost a hand-off each and left up to eight threads contending for two cores
    /// and the reply lock (six futex calls per read); the reader doing the pread and the send itself
    /// uses 0.84x the CPU per GiB on one connection and 0.74x on four (docs/performance.md, round 5).
    /// 0 sends every file read to a worker (bench host --cached-read-maximum).
    /// </summary>
    internal static int CachedReadMaximum = int.MaxValue;

    /// <summary>
    /// A buffered file WRITE up to this size, without FUA, runs on the reader when it is the only
    /// request in flight (a client writing one request at a time, as the kernel does for `dd
    /// oflag=direct`): nothing waits behind it that a worker could have run meanwhile, and the
    /// hand-off to a worker (a futex wake-up and a thread switch each way) is most of what such a
    /// write costs beyond the copy into the page cache. 0 turns it off (bench host --inline-write-maximum).
    /// </summary>
    internal static int InlineWriteMaximum = 4 * 1024 * 1024;

    /// <summary>
    /// A buffered file WRITE up to this size, without FUA, runs on the reader whatever else is in
    /// flight: copying a few KiB into the page cache costs less than handing it to a worker and back
    /// (4 KiB random writes at QD 32 took 0.67x the time, 0.56x the server CPU). Larger writes keep
    /// the worker while others are in flight, so the reader receives the next requests meanwhile
    /// (inline 64 KiB and 128 KiB writes measured no gain). 0 turns it off (bench host
    /// --inline-small-write-maximum).
    /// </summary>
    internal static int InlineSmallWriteMaximum = 32 * 1024;

    /// <summary>
    /// After a WRITE this large the reader receives one request header at a time (see
    /// <see cref="BufferedReader.HeaderAtATime"/>); any other request turns that off again. Set at
    /// 64 KiB it cost the 64 KiB random mix 7% (an extra receive for each read after a write, where
    /// the copy it saved is small); from 128 KiB, the size of every write the kernel sends for large
    /// direct writes, it only gained. int.MaxValue turns it off (bench host
    /// --header-at-a-time-write-minimum).
    /// </summary>
    internal static int HeaderAtATimeWriteMinimum = 128 * 1024;

    private void ReadRequests(NegotiatedSession session, ServedExport export, TransmissionFlags flags, BufferedReader reader, RequestWorkers workers)
    {
        var store = export.Store;
        // Non-blocking (memory) stores run inline, blocking ones on this connection's workers, concurrently.
        bool nonBlocking = (store.Capabilities & StoreCapabilities.NonBlocking) != 0;
        var pinned = store as IPinnedMemoryStore;
        // Spliced reads (remote peers) skip the copy the cached path makes, so they keep the worker.
        var cached = store as IPageCacheStore;
        bool structured = session.StructuredReplies;
        int cachedReadMaximum = CachedReadMaximum;
        if (_writer.SpliceFiles)
            cachedReadMaximum = Math.Min(cachedReadMaximum, RequestExecutor.SpliceMinimum - 1);
        // Structured reads that large look for holes first, to send them as OFFSET_HOLE chunks: the executor's job.
        if (structured)
            cachedReadMaximum = Math.Min(cachedReadMaximum, RequestExecutor.HoleAwareReadMinimum - 1);
        Span<byte> header = stackalloc byte[NbdLimits.RequestHeaderSize];
        while (true)
        {
            if (!reader.TryReadExactly(header))
                return;
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
            if (magic != NbdMagic.Request)
            {
                _log.LogWarning("Client {Client} sent a bad request magic 0x{Magic:x8}; disconnecting", ClientAddress, magic);
                return;
            }
            var cmdFlags = (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(header[4..]);
            var command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
            ulong offset = BinaryPrimitives.ReadUInt64BigEndian(header[16..]);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header[24..]);
            reader.HeaderAtATime = command == NbdCommand.Write && length >= HeaderAtATimeWriteMinimum;

            if (command == NbdCommand.Disconnect)
            {
                _log.LogDebug("Client {Client} sent DISC", ClientAddress);
                return;
            }

            var error = RequestValidator.Validate(command, cmdFlags, offset, length, export.Size, flags,
                session.StructuredReplies, session.BaseAllocationContextId != null);
            if (command == NbdCommand.Write && error != NbdError.None && length > NbdLimits.AbsurdPayload)
            {
                _log.LogWarning("Client {Client} announced a {Length}-byte write; disconnecting", ClientAddress, length);
                return;
            }

            // Take the slot before looking at _stopping: StopAsync sets the flag and then waits for
            // in-flight requests, so a request either counts as in flight or sees the flag. Both come
            // before the payload is read, so a write refused at shutdown never reaches a store that
            // receives payloads in place.
            // Batched replies hold their slots until sent: send them rather than wait for a slot.
            if (_slots.CurrentCount == 0)
                _batch.Flush();
            _slots.Wait();
            // A full fence between taking the slot and reading _stopping (StopAsync fences between setting the flag and
            // reading InFlight): SemaphoreSlim's count store can otherwise pass the flag's load on x86, and StopAsync could
            // see no request in flight while this one goes on to run after the socket was half-closed: a write applied
            // whose reply is never sent.
            Interlocked.MemoryBarrier();
            var request = RentRequest();
            request.Command = command;
            request.Flags = cmdFlags;
            request.Cookie = cookie;
            request.Offset = offset;
            request.Length = length;
            if (error == NbdError.None && _stopping)
                error = NbdError.Shutdown;
            if (command == NbdCommand.Write)
            {
                try
                {
                    ReadPayload(request, reader, pinned, error);
                }
                catch
                {
                    Complete(request);
                    throw;
                }
            }
            if (error != NbdError.None)
            {
                RequestExecutor.Fail(request, _batch, structured, error, Counters);
                _batch.Hold(request);
                continue;
            }
            if (nonBlocking && (command != NbdCommand.Read || length < ParallelMemoryReadMinimum))
                Execute(request, _batch);
            else if (cached != null && command == NbdCommand.Read && length <= cachedReadMaximum && TryReadCached(request, cached, structured))
                continue;
            else if (cached != null && command == NbdCommand.Write && (cmdFlags & NbdCommandFlags.Fua) == 0
                     && (length <= InlineSmallWriteMaximum || (length <= InlineWriteMaximum && InFlight == 1)))
                Execute(request, _batch);
            else
                workers.Enqueue(request);
        }
    }

    /// <summary>
    /// Reads a WRITE payload: drained when the request is refused (so the stream stays in sync),
    /// received straight into a memory store's chunks, or into a pooled buffer for the store to write.
    /// </summary>
    private static unsafe void ReadPayload(NbdRequest request, BufferedReader reader, IPinnedMemoryStore? pinned, NbdError error)
    {
        int length = (int)request.Length;
        if (error != NbdError.None)
        {
            reader.Skip(request.Length);
        }
        else if (pinned != null)
        {
            var segments = request.Segments;
            pinned.GetWriteSegments((long)request.Offset, length, segments);
            try
            {
                // One vector per chunk, so a receive fills as many chunks as the socket holds. The chunks
                // are pinned-heap arrays (they never move) and the segments keep them alive. A payload is
                // at most NbdLimits.MaxPayload, a few hundred chunks: the vectors fit on the stack.
                Libc.IoVec* vectors = stackalloc Libc.IoVec[segments.Count];
                for (int i = 0; i < segments.Count; i++)
                {
                    var segment = segments[i];
                    byte* chunk = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(segment.Chunk!));
                    vectors[i] = new Libc.IoVec { Base = (nint)(chunk + segment.Offset), Length = (nuint)segment.Length };
                }
                reader.ReadExactly(vectors, segments.Count);
            }
            finally
            {
                segments.Clear();
            }
            request.PayloadInStore = true;
        }
        else
        {
            request.Payload = ArrayPool<byte>.Shared.Rent(length);
            reader.ReadExactly(request.Payload.AsSpan(0, length));
        }
    }

    /// <summary>Worker-thread entry for one request: the reply goes straight out.</summary>
    public void Execute(NbdRequest request) => Execute(request, _writer);

    /// <summary>
    /// Runs one request, its reply into <paramref name="sink"/>: on a worker the writer (and the
    /// request completes here), on the reader its batch (and it completes when the batch is sent).
    /// </summary>
    private void Execute(NbdRequest request, IReplySink sink)
    {
        var session = _session!;
        try
        {
            RequestExecutor.Run(request, session.Export.Store, sink, session.StructuredReplies,
                session.BaseAllocationContextId, Counters);
        }
        catch (Exception e)
        {
            _log.LogError(e, "Request {Command} from {Client} failed unexpectedly", request.Command, ClientAddress);
            try { RequestExecutor.Fail(request, sink, session.StructuredReplies, NbdError.IO, Counters); }
            catch (Exception) { _transport.Shutdown(); }
        }
        finally
        {
            if (sink == _batch)
                _batch.Hold(request);
            else
                Complete(request);
        }
    }

    /// <summary>
    /// A READ the page cache answers without waiting, run on the reader: the data is read straight
    /// into the reply batch, or, when it is larger than a batch holds, into a pooled buffer sent at
    /// once. False when any of it is not cached: nothing is sent (the reply the batch began is
    /// dropped), and the request goes to a worker.
    /// </summary>
    private bool TryReadCached(NbdRequest request, IPageCacheStore store, bool structured)
    {
        int length = (int)request.Length;
        if (length > ReplyBatch.MaxRead)
            return TryReadCachedUnbatched(request, store, structured);
        var data = _batch.BeginRead(request.Cookie, structured, request.Offset, length);
        if (data.Length != length || !store.TryReadCached((long)request.Offset, data))
            return false;
        Counters.CountRead(request.Length);
        _batch.CommitRead();
        _batch.Hold(request);
        return true;
    }

    private bool TryReadCachedUnbatched(NbdRequest request, IPageCacheStore store, bool structured)
    {
        int length = (int)request.Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var data = buffer.AsSpan(0, length);
            if (!store.TryReadCached((long)request.Offset, data))
                return false;
            Counters.CountRead(request.Length);
            // Too large for the batch: it sends what it holds first, then this reply on its own.
            if (structured)
                _batch.DataChunk(request.Cookie, true, request.Offset, data);
            else
                _batch.SimpleReply(request.Cookie, NbdError.None, data);
            _batch.Hold(request);
            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private NbdRequest RentRequest()
    {
        lock (_pool)
            return _pool.Count > 0 ? _pool.Pop() : new NbdRequest(this);
    }

    private void Complete(NbdRequest request)
    {
        if (request.Payload != null)
        {
            ArrayPool<byte>.Shared.Return(request.Payload);
            request.Payload = null;
        }
        request.PayloadInStore = false;
        lock (_pool)
            _pool.Push(request);
        _slots.Release();
    }

    /// <summary>
    /// Graceful stop: new requests get ESHUTDOWN (and new options ERR_SHUTDOWN), in-flight ones
    /// finish, then the socket closes.
    /// </summary>
    public async Task StopAsync(TimeSpan grace)
    {
        _stopping = true;
        Interlocked.MemoryBarrier(); // the flag must be visible before InFlight is read below
        var until = DateTime.UtcNow + grace;
        if (!InTransmission)
        {
            // A client mid-handshake gets a moment to hear ERR_SHUTDOWN for its next option.
            var handshakeGrace = DateTime.UtcNow + TimeSpan.FromSeconds(1);
            until = handshakeGrace < until ? handshakeGrace : until;
            while (!InTransmission && DateTime.UtcNow < until && !Closed.IsCompleted)
                await Task.Delay(10).ConfigureAwait(false);
        }
        while (InFlight > 0 && DateTime.UtcNow < until && !Closed.IsCompleted)
            await Task.Delay(10).ConfigureAwait(false);
        // Every reply is written: half-close so the client reads them all and then sees EOF; a full
        // close now could turn into RST and make the client's kernel drop replies it has not read.
        // The client gets what is left of the grace period (at least 2 s) to read them and close.
        var closeBy = until - DateTime.UtcNow;
        if (closeBy < TimeSpan.FromSeconds(2)) closeBy = TimeSpan.FromSeconds(2);
        Interlocked.Exchange(ref _stopDrainUntilTicks, (DateTime.UtcNow + closeBy).Ticks);
        _transport.ShutdownSend();
        await Task.WhenAny(Closed, Task.Delay(closeBy)).ConfigureAwait(false);
        _transport.Shutdown();
        // The reader wakes on the shutdown; give it a bounded time, a stuck store must not hang Stop.
        await Task.WhenAny(Closed, Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
    }


    private void Close()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        // Let running requests finish before the transport and slot go away.
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (InFlight > 0 && DateTime.UtcNow < until)
            Thread.Sleep(1);
        _session?.Export.Detach(this);
        // Replies may still sit unread at the client: FIN, then read until it closes, so the close
        // below does not become an RST that discards them. During a stop the reader gets here early when a late
        // request's ESHUTDOWN meets the half-closed socket; the client then keeps the stop's time to read, not 1 s
        // (a starved client lost replies of writes that had been carried out).
        _transport.ShutdownSend();
        var drain = TimeSpan.FromSeconds(1);
        var stopDrain = new DateTime(Interlocked.Read(ref _stopDrainUntilTicks), DateTimeKind.Utc) - DateTime.UtcNow;
        _transport.DrainUntilClosed(stopDrain > drain ? stopDrain : drain);
        (_session?.Transport ?? _negotiatedTransport ?? _transport).Dispose();
        _transport.Dispose();
        _server.Forget(this);
        _closed.TrySetResult();
    }

    private static string Describe(EndPoint? endPoint) => endPoint switch
    {
        IPEndPoint ip => ip.ToString(),
        System.Net.Sockets.UnixDomainSocketEndPoint => "unix",
        null => "local",
        _ => endPoint.ToString() ?? "unknown",
    };
}
