using System.Buffers.Binary;
using System.Net.Security;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// One NBD connection in transmission with many requests in flight. Callers send on their own thread under a
/// send lock (header and payload in one vectored send); one dedicated reader thread takes replies in whatever
/// order the server sends them, matches them to requests by cookie and reads READ data straight from the socket
/// into the caller's buffer. Simple and structured replies (data, hole, block-status and error chunks) are both
/// understood. When the connection dies every request in flight fails with the same exception, and so does every
/// later one.
/// </summary>
internal sealed class PipelinedConnection : IDisposable
{
    private readonly NbdTransport _transport;
    private readonly BufferedReader _reader;
    private readonly RequestSlot[] _slots;
    private readonly SemaphoreSlim _slotGate;
    private readonly int[] _freeSlots;
    private int _freeCount;
    private readonly object _freeLock = new();
    private readonly object _sendLock = new();
    private readonly byte[] _requestHeader = new byte[NbdLimits.RequestHeaderSize];
    private readonly byte[] _replyHeader = new byte[NbdLimits.StructuredReplyHeaderSize + 12];
    private readonly byte[] _scratch = new byte[4096];
    private readonly Thread _readerThread;
    private readonly uint? _allocationContext;
    private Exception? _failure;
    private int _inFlight;
    private int _disposed;

    private PipelinedConnection(NbdTransport transport, NbdNegotiatedConnection negotiated, int maxInFlight, bool inlineCompletions)
    {
        _transport = transport;
        _reader = new BufferedReader(transport);
        Uri = negotiated.Uri;
        Export = negotiated.Export;
        StructuredReplies = negotiated.StructuredReplies;
        if (negotiated.MetaContexts.TryGetValue(NbdMetaContext.BaseAllocation, out uint id))
            _allocationContext = id;
        _slots = new RequestSlot[maxInFlight];
        _freeSlots = new int[maxInFlight];
        for (int i = 0; i < maxInFlight; i++)
        {
            _slots[i] = new RequestSlot(this, i, inlineCompletions);
            _freeSlots[i] = maxInFlight - 1 - i;
        }
        _freeCount = maxInFlight;
        _slotGate = new SemaphoreSlim(maxInFlight, maxInFlight);
        _readerThread = new Thread(ReadReplies) { IsBackground = true, Name = "NBD client reader" };
    }

    public NbdUri Uri { get; }
    public NbdExportInfo Export { get; }
    public bool StructuredReplies { get; }
    public bool SupportsBlockStatus => _allocationContext is not null;

    /// <summary>Requests sent and not yet answered.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Set once the connection failed or was closed.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>
    /// Takes over a negotiated connection's socket (it is detached from <paramref name="negotiated"/>) and starts
    /// the reader thread.
    /// </summary>
    public static PipelinedConnection Start(NbdNegotiatedConnection negotiated, int maxInFlight, bool inlineCompletions)
    {
        var (socket, stream) = negotiated.DetachTransport();
        NbdTransport transport;
        try
        {
            // Negotiation ran asynchronously, which leaves the descriptor non-blocking; the reader thread and the
            // senders want plain blocking calls (see Libc.SetBlocking).
            if (!Libc.SetBlocking(socket))
                throw new IOException($"Cannot make the socket to {negotiated.Uri} blocking: {Libc.StrError(Libc.LastErrno)}");
            var plain = new SocketTransport(socket);
            if (stream is SslStream ssl)
                transport = TlsTransport.ForClient(plain, ssl);
            else
            {
                stream.Dispose(); // a NetworkStream that does not own the socket
                transport = plain;
            }
        }
        catch
        {
            stream.Dispose();
            socket.Dispose();
            throw;
        }
        var connection = new PipelinedConnection(transport, negotiated, maxInFlight, inlineCompletions);
        connection._readerThread.Start();
        return connection;
    }

    /// <summary>
    /// Sends one request and returns an awaitable for its reply; await it exactly once. The request holds the
    /// caller's <paramref name="readInto"/> or <paramref name="payload"/> until it completes. Cancellation is
    /// honoured while waiting for a free slot; a request already sent runs to its reply or to the connection's end.
    /// </summary>
    public ValueTask Submit(NbdCommand command, NbdCommandFlags flags, long offset, uint length,
        ReadOnlyMemory<byte> payload, Memory<byte> readInto, List<Extent>? extents, CancellationToken ct)
    {
        if (Volatile.Read(ref _failure) is { } failed)
            return ValueTask.FromException(failed);
        if (!_slotGate.Wait(0))
            return SubmitAfterWaitAsync(command, flags, offset, length, payload, readInto, extents, ct);
        return SubmitWithSlot(command, flags, offset, length, payload, readInto, extents);
    }

    private async ValueTask SubmitAfterWaitAsync(NbdCommand command, NbdCommandFlags flags, long offset, uint length,
        ReadOnlyMemory<byte> payload, Memory<byte> readInto, List<Extent>? extents, CancellationToken ct)
    {
        await _slotGate.WaitAsync(ct).ConfigureAwait(false);
        await SubmitWithSlot(command, flags, offset, length, payload, readInto, extents).ConfigureAwait(false);
    }

    private ValueTask SubmitWithSlot(NbdCommand command, NbdCommandFlags flags, long offset, uint length,
        ReadOnlyMemory<byte> payload, Memory<byte> readInto, List<Extent>? extents)
    {
        RequestSlot slot;
        lock (_freeLock)
            slot = _slots[_freeSlots[--_freeCount]];
        slot.Prepare(command, offset, length, readInto, extents);
        Interlocked.Increment(ref _inFlight);
        // Publish the request before checking for failure; the reader publishes the failure before failing every
        // request in flight. One of the two sees the other, so no request is left waiting on a dead connection.
        Interlocked.Exchange(ref slot.State, RequestSlot.InFlight);
        var task = slot.AsValueTask();
        if (Volatile.Read(ref _failure) is { } failed)
        {
            slot.TryComplete(failed);
            return task;
        }
        try
        {
            lock (_sendLock)
            {
                var h = _requestHeader.AsSpan();
                BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.Request);
                BinaryPrimitives.WriteUInt16BigEndian(h[4..], (ushort)flags);
                BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)command);
                BinaryPrimitives.WriteUInt64BigEndian(h[8..], slot.Cookie);
                BinaryPrimitives.WriteUInt64BigEndian(h[16..], (ulong)offset);
                BinaryPrimitives.WriteUInt32BigEndian(h[24..], length);
                _transport.Write(h, payload.Span);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // The reader wakes up on the shutdown and fails everything in flight, this request included.
            Fail(new NbdConnectionException($"Lost the connection to {Uri} while sending {command}: {e.Message}", e));
        }
        return task;
    }

    /// <summary>Called by a slot once its caller has taken the result: the slot can carry another request.</summary>
    internal void Release(RequestSlot slot)
    {
        if (Interlocked.CompareExchange(ref slot.State, RequestSlot.Free, RequestSlot.Completed) != RequestSlot.Completed)
            return;
        Interlocked.Decrement(ref _inFlight);
        lock (_freeLock)
            _freeSlots[_freeCount++] = slot.Index;
        _slotGate.Release();
    }

    private void ReadReplies()
    {
        try
        {
            var header = _replyHeader.AsSpan();
            while (true)
            {
                if (!_reader.TryReadExactly(header[..4]))
                    throw new NbdConnectionException($"{Uri} closed the connection.");
                uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
                if (magic == NbdMagic.SimpleReply)
                    ReadSimpleReply(header);
                else if (magic == NbdMagic.StructuredReply && StructuredReplies)
                    ReadChunk(header);
                else
                    throw new NbdProtocolException($"{Uri} sent reply magic 0x{magic:x8}.");
            }
        }
        catch (Exception e)
        {
            Fail(e switch
            {
                NbdClientException => e,
                _ when Volatile.Read(ref _disposed) != 0 => new ObjectDisposedException(nameof(NbdBlockClient), "The NBD client was closed."),
                EndOfStreamException => new NbdConnectionException($"{Uri} closed the connection in the middle of a reply.", e),
                IOException => new NbdConnectionException($"Lost the connection to {Uri}: {e.Message}", e),
                _ => new NbdConnectionException($"The connection to {Uri} failed: {e.Message}", e),
            });
        }
    }

    private void ReadSimpleReply(Span<byte> header)
    {
        _reader.ReadExactly(header[4..NbdLimits.SimpleReplyHeaderSize]);
        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(header[4..]);
        var slot = Find(BinaryPrimitives.ReadUInt64BigEndian(header[8..]));
        if (error != NbdError.None)
        {
            slot.TryComplete(CommandFailed(slot, error, null));
            return;
        }
        if (slot.Command == NbdCommand.Read)
            _reader.ReadExactly(slot.Buffer.Span);
        else if (slot.Command == NbdCommand.BlockStatus)
            throw new NbdProtocolException($"{Uri} answered BLOCK_STATUS with a simple reply.");
        slot.TryComplete(null);
    }

    private void ReadChunk(Span<byte> header)
    {
        _reader.ReadExactly(header[4..NbdLimits.StructuredReplyHeaderSize]);
        var flags = (NbdReplyChunkFlags)BinaryPrimitives.ReadUInt16BigEndian(header[4..]);
        var type = (NbdReplyChunkType)BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
        var slot = Find(BinaryPrimitives.ReadUInt64BigEndian(header[8..]));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header[16..]);
        switch (type)
        {
            case NbdReplyChunkType.None:
                if (length != 0) throw Malformed(type, length);
                break;
            case NbdReplyChunkType.OffsetData:
                ReadDataChunk(slot, length);
                break;
            case NbdReplyChunkType.OffsetHole:
                ReadHoleChunk(slot, length);
                break;
            case NbdReplyChunkType.BlockStatus:
                ReadBlockStatusChunk(slot, length);
                break;
            default:
                if (((ushort)type & 0x8000) == 0)
                    throw new NbdProtocolException($"{Uri} sent an unknown reply chunk type {(ushort)type} for {slot.Command}.");
                ReadErrorChunk(slot, type, length);
                break;
        }
        if (!flags.HasFlag(NbdReplyChunkFlags.Done))
            return;
        if (slot.Error != NbdError.None)
            slot.TryComplete(CommandFailed(slot, slot.Error, slot.ErrorMessage));
        else if (slot.Command == NbdCommand.Read && slot.Covered != slot.Length)
            throw new NbdProtocolException($"{Uri} ended the READ of {slot.Length} bytes at offset {slot.Offset} after covering only {slot.Covered} bytes.");
        else if (slot.Command == NbdCommand.BlockStatus && slot.ExtentBytes == 0)
            throw new NbdProtocolException($"{Uri} ended BLOCK_STATUS at offset {slot.Offset} without a base:allocation extent.");
        else
            slot.TryComplete(null);
    }

    private void ReadDataChunk(RequestSlot slot, uint length)
    {
        if (length < 8 || slot.Command != NbdCommand.Read) throw Malformed(NbdReplyChunkType.OffsetData, length);
        var h = _replyHeader.AsSpan(NbdLimits.StructuredReplyHeaderSize, 8);
        _reader.ReadExactly(h);
        long at = CheckedPlacement(slot, BinaryPrimitives.ReadUInt64BigEndian(h), length - 8u);
        _reader.ReadExactly(slot.Buffer.Span.Slice((int)at, (int)(length - 8)));
        slot.Covered += length - 8;
    }

    private void ReadHoleChunk(RequestSlot slot, uint length)
    {
        if (length != 12 || slot.Command != NbdCommand.Read) throw Malformed(NbdReplyChunkType.OffsetHole, length);
        var h = _replyHeader.AsSpan(NbdLimits.StructuredReplyHeaderSize, 12);
        _reader.ReadExactly(h);
        uint size = BinaryPrimitives.ReadUInt32BigEndian(h[8..]);
        long at = CheckedPlacement(slot, BinaryPrimitives.ReadUInt64BigEndian(h), size);
        slot.Buffer.Span.Slice((int)at, (int)size).Clear();
        slot.Covered += size;
    }

    /// <summary>Where a chunk for [offset, offset+size) starts in the request's buffer; throws when it lies outside the request.</summary>
    private long CheckedPlacement(RequestSlot slot, ulong offset, uint size)
    {
        ulong start = (ulong)slot.Offset;
        if (offset < start || offset - start + size > slot.Length)
            throw new NbdProtocolException($"{Uri} sent a READ chunk for {size} bytes at offset {offset}, outside the request ({slot.Length} bytes at {slot.Offset}).");
        return (long)(offset - start);
    }

    private void ReadBlockStatusChunk(RequestSlot slot, uint length)
    {
        if (length < 12 || (length - 4) % 8 != 0 || slot.Command != NbdCommand.BlockStatus)
            throw Malformed(NbdReplyChunkType.BlockStatus, length);
        var scratch = _scratch.AsSpan();
        _reader.ReadExactly(scratch[..4]);
        bool ours = BinaryPrimitives.ReadUInt32BigEndian(scratch) == _allocationContext && slot.ExtentBytes == 0;
        long remaining = length - 4;
        while (remaining > 0)
        {
            int n = (int)Math.Min(remaining, scratch.Length);
            _reader.ReadExactly(scratch[..n]);
            remaining -= n;
            for (int i = 0; ours && i < n; i += 8)
            {
                uint extent = BinaryPrimitives.ReadUInt32BigEndian(scratch[i..]);
                uint flags = BinaryPrimitives.ReadUInt32BigEndian(scratch[(i + 4)..]);
                if (extent == 0)
                    throw new NbdProtocolException($"{Uri} sent a zero-length extent in BLOCK_STATUS at offset {slot.Offset}.");
                // The last extent may run past the request; keep what was asked for and ignore the rest.
                long want = slot.Length - slot.ExtentBytes;
                if (want <= 0)
                    break;
                long take = Math.Min(extent, want);
                slot.Extents!.Add(new Extent(take, (ExtentFlags)(flags & (uint)(ExtentFlags.Hole | ExtentFlags.Zero))));
                slot.ExtentBytes += take;
            }
        }
    }

    private void ReadErrorChunk(RequestSlot slot, NbdReplyChunkType type, uint length)
    {
        if (length < 6) throw Malformed(type, length);
        var h = _replyHeader.AsSpan(NbdLimits.StructuredReplyHeaderSize, 6);
        _reader.ReadExactly(h);
        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(h);
        int messageLength = BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
        if (6 + messageLength > length) throw Malformed(type, length);
        string? message = null;
        if (messageLength > 0)
        {
            var text = messageLength <= _scratch.Length ? _scratch.AsSpan(0, messageLength) : new byte[messageLength];
            _reader.ReadExactly(text);
            message = System.Text.Encoding.UTF8.GetString(text).TrimEnd('\0', '\n');
        }
        _reader.Skip(length - 6 - messageLength); // ERROR_OFFSET's u64 offset, or anything a newer server adds
        if (slot.Error == NbdError.None)
        {
            // Error value 0 in an error chunk is a broken server; report it as EINVAL like unknown values.
            slot.Error = error == NbdError.None ? NbdError.Invalid : error;
            slot.ErrorMessage = message;
        }
    }

    private RequestSlot Find(ulong cookie)
    {
        uint index = (uint)cookie;
        if (index < (uint)_slots.Length)
        {
            var slot = _slots[index];
            if (slot.Generation == (uint)(cookie >> 32) && Volatile.Read(ref slot.State) == RequestSlot.InFlight)
                return slot;
        }
        throw new NbdProtocolException($"{Uri} answered cookie 0x{cookie:x16}, which no request in flight carries.");
    }

    private NbdProtocolException Malformed(NbdReplyChunkType type, uint length) =>
        new($"{Uri} sent a malformed {type} chunk ({length} bytes).");

    private NbdCommandException CommandFailed(RequestSlot slot, NbdError error, string? serverMessage)
    {
        string what = slot.Command is NbdCommand.Flush ? "FLUSH" : $"{slot.Command} of {slot.Length} bytes at offset {slot.Offset}";
        string suffix = string.IsNullOrEmpty(serverMessage) ? "" : $" Server says: {serverMessage}";
        return new NbdCommandException(slot.Command, error, $"{what} on {Uri} failed: {error} ({(int)error}).{suffix}");
    }

    /// <summary>Marks the connection dead (first reason wins), wakes the reader, and fails every request in flight.</summary>
    public void Fail(Exception reason)
    {
        Interlocked.CompareExchange(ref _failure, reason, null);
        _transport.Shutdown();
        if (Thread.CurrentThread != _readerThread)
            return; // the reader wakes up on the shutdown and fails the requests itself
        var failure = Volatile.Read(ref _failure)!;
        foreach (var slot in _slots)
        {
            if (Volatile.Read(ref slot.State) == RequestSlot.InFlight)
                slot.TryComplete(failure);
        }
    }

    /// <summary>
    /// Sends NBD_CMD_DISC once the requests in flight are answered (or <paramref name="drainTimeout"/> passed), then
    /// closes. The server finishes what it had and closes its side.
    /// </summary>
    public void Disconnect(TimeSpan drainTimeout)
    {
        var until = DateTime.UtcNow + drainTimeout;
        while (InFlight > 0 && Failure is null && DateTime.UtcNow < until)
            Thread.Sleep(1);
        if (Failure is null)
        {
            try
            {
                lock (_sendLock)
                {
                    var h = _requestHeader.AsSpan();
                    h.Clear();
                    BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.Request);
                    BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)NbdCommand.Disconnect);
                    _transport.Write(h, default);
                }
                _transport.ShutdownSend();
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { }
            // The server closes after DISC; reading until then keeps our close from resetting its last replies.
            if (Thread.CurrentThread != _readerThread)
                _readerThread.Join(TimeSpan.FromSeconds(2));
        }
        Dispose();
    }

    /// <summary>
    /// Fails every request in flight and shuts the socket down, without waiting for anything: safe from any thread,
    /// also while this connection's reader thread is busy in a caller's continuation. <see cref="Dispose"/> still
    /// has to release the socket.
    /// </summary>
    public void Abort() => Fail(new ObjectDisposedException(nameof(NbdBlockClient), "The NBD client was aborted."));

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        Fail(new ObjectDisposedException(nameof(NbdBlockClient), "The NBD client was closed."));
        if (Thread.CurrentThread != _readerThread)
            _readerThread.Join(TimeSpan.FromSeconds(10));
        _transport.Dispose();
    }
}
