using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Replies to the requests a connection's reader runs itself (memory stores, reads the page cache
/// answers at once), gathered and sent together: the reader flushes before it would wait for the
/// socket (so no reply waits on the client's next request), when the batch is full, and before it
/// waits for a free request slot. Under load one recv brings many requests and one sendmsg takes
/// all their replies, where a reply each cost a syscall and, with TCP_NODELAY, a segment each.
/// Headers and copied data go into one pinned buffer; memory-store data is pointed at in place,
/// the batch holding the chunk references until the send, so a TRIM meanwhile cannot free them.
/// Requests stay in flight (holding their slot) until their reply is sent, so a graceful stop
/// that waits for in-flight requests also waits for the batch. One thread (the reader) uses it.
/// </summary>
internal sealed class ReplyBatch : IReplySink
{
    /// <summary>Bytes of headers and copied data one batch holds; larger replies go out on their own.</summary>
    public const int BufferSize = 256 * 1024 + 4096;
    /// <summary>The largest READ whose data <see cref="BeginRead"/> always finds room for (in an empty batch).</summary>
    public const int MaxRead = BufferSize - ReplyHeaders.DataChunkSize;
    private const int MaxVectors = 256;

    private readonly ReplyWriter _writer;
    private readonly Action<NbdRequest> _complete;
    private readonly byte[] _buffer = GC.AllocateArray<byte>(BufferSize, pinned: true);
    private readonly nint _bufferAddress;
    private readonly Libc.IoVec[] _vectors = GC.AllocateArray<Libc.IoVec>(MaxVectors, pinned: true);
    // Memory-store chunks the vectors point into, held until they are sent.
    private readonly byte[]?[] _chunks = new byte[]?[MaxVectors];
    private readonly NbdRequest?[] _held;
    private int _used, _vectorCount, _chunkCount, _heldCount, _reserved;
    // Bytes of whole replies waiting (headers, copied and pointed-at data).
    private long _pending;

    /// <summary>
    /// Once this many bytes of whole replies wait, they go out without waiting for the rest of
    /// what one receive brought: a batch of everything held the client's first reply until the
    /// reader had run every request, and the client and server took turns instead of overlapping
    /// (single-connection 4 KiB reads and the 64 KiB mix lost throughput; see docs/performance.md).
    /// </summary>
    internal static int FlushBytes = 16 * 1024;

    public unsafe ReplyBatch(ReplyWriter writer, int maxInFlight, Action<NbdRequest> complete)
    {
        _writer = writer;
        _complete = complete;
        _held = new NbdRequest?[maxInFlight];
        _bufferAddress = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));
    }

    public bool ZeroCopy => _writer.ZeroCopy;

    public bool SpliceFiles => _writer.SpliceFiles;

    /// <summary>The request's reply is in the batch (or was sent); it completes once the batch is sent.</summary>
    public void Hold(NbdRequest request)
    {
        _held[_heldCount++] = request;
        if (_pending >= FlushBytes)
            Flush();
    }

    /// <summary>Sends what the batch holds, then completes its requests.</summary>
    public unsafe void Flush()
    {
        if (_vectorCount > 0)
        {
            fixed (Libc.IoVec* vectors = _vectors)
                _writer.SendBatch(vectors, _vectorCount, _buffer.AsSpan(0, _used));
        }
        _chunks.AsSpan(0, _chunkCount).Clear();
        _used = _vectorCount = _chunkCount = 0;
        _pending = 0;
        for (int i = 0; i < _heldCount; i++)
        {
            _complete(_held[i]!);
            _held[i] = null;
        }
        _heldCount = 0;
    }

    /// <summary>
    /// Room for a successful READ reply whose <paramref name="length"/> data bytes the caller reads
    /// straight into the returned span (the header is already written before it); then
    /// <see cref="CommitRead"/>, or nothing to drop it. Empty when the reply is too large to batch.
    /// </summary>
    public Span<byte> BeginRead(ulong cookie, bool structured, ulong offset, int length)
    {
        int head = structured ? ReplyHeaders.DataChunkSize : NbdLimits.SimpleReplyHeaderSize;
        if (!MakeRoom(head + length, 1))
            return default;
        var reply = _buffer.AsSpan(_used, head + length);
        if (structured)
            ReplyHeaders.Data(reply, cookie, true, offset, length);
        else
            ReplyHeaders.Simple(reply, cookie, NbdError.None);
        _reserved = head + length;
        return reply[head..];
    }

    public void CommitRead() => AppendBuffered(_reserved);

    public void SimpleReply(ulong cookie, NbdError error, ReadOnlySpan<byte> data)
    {
        if (error != NbdError.None)
            data = default;
        int head = NbdLimits.SimpleReplyHeaderSize;
        if (!MakeRoom(head + data.Length, 1))
        {
            _writer.SimpleReply(cookie, error, data);
            return;
        }
        var reply = _buffer.AsSpan(_used, head + data.Length);
        ReplyHeaders.Simple(reply, cookie, error);
        data.CopyTo(reply[head..]);
        AppendBuffered(reply.Length);
    }

    public void SimpleReplyFromFile(ulong cookie, int descriptor, long offset, int length)
    {
        Flush(); // keeps this reply's chunks in order (see MakeRoom); splicing cannot be batched
        _writer.SimpleReplyFromFile(cookie, descriptor, offset, length);
    }

    public void SimpleReplyGather(ulong cookie, ReadOnlySpan<MemorySegment> segments)
    {
        if (!MakeRoom(NbdLimits.SimpleReplyHeaderSize, 1 + VectorsFor(segments)))
        {
            _writer.SimpleReplyGather(cookie, segments);
            return;
        }
        AppendBuffered(ReplyHeaders.Simple(_buffer.AsSpan(_used), cookie, NbdError.None).Length);
        AppendSegments(segments);
    }

    public void DataChunk(ulong cookie, bool done, ulong offset, ReadOnlySpan<byte> data)
    {
        int head = ReplyHeaders.DataChunkSize;
        if (!MakeRoom(head + data.Length, 1))
        {
            _writer.DataChunk(cookie, done, offset, data);
            return;
        }
        var reply = _buffer.AsSpan(_used, head + data.Length);
        ReplyHeaders.Data(reply, cookie, done, offset, data.Length);
        data.CopyTo(reply[head..]);
        AppendBuffered(reply.Length);
    }

    public void DataChunkFromFile(ulong cookie, bool done, ulong offset, int descriptor, int length)
    {
        Flush();
        _writer.DataChunkFromFile(cookie, done, offset, descriptor, length);
    }

    public void DataChunkGather(ulong cookie, bool done, ulong offset, ReadOnlySpan<MemorySegment> segments, int length)
    {
        if (!MakeRoom(ReplyHeaders.DataChunkSize, 1 + VectorsFor(segments)))
        {
            _writer.DataChunkGather(cookie, done, offset, segments, length);
            return;
        }
        AppendBuffered(ReplyHeaders.Data(_buffer.AsSpan(_used), cookie, done, offset, length).Length);
        AppendSegments(segments);
    }

    public void HoleChunk(ulong cookie, bool done, ulong offset, uint size)
    {
        if (!MakeRoom(ReplyHeaders.HoleChunkSize, 1))
            _writer.HoleChunk(cookie, done, offset, size);
        else
            AppendBuffered(ReplyHeaders.Hole(_buffer.AsSpan(_used), cookie, done, offset, size).Length);
    }

    public void ErrorChunk(ulong cookie, NbdError error)
    {
        if (!MakeRoom(ReplyHeaders.ErrorChunkSize, 1))
            _writer.ErrorChunk(cookie, error);
        else
            AppendBuffered(ReplyHeaders.Error(_buffer.AsSpan(_used), cookie, error).Length);
    }

    public void BlockStatusChunk(ulong cookie, ReadOnlySpan<byte> descriptors)
    {
        int head = NbdLimits.StructuredReplyHeaderSize;
        if (!MakeRoom(head + descriptors.Length, 1))
        {
            _writer.BlockStatusChunk(cookie, descriptors);
            return;
        }
        var reply = _buffer.AsSpan(_used, head + descriptors.Length);
        ReplyHeaders.BlockStatus(reply, cookie, descriptors.Length);
        descriptors.CopyTo(reply[head..]);
        AppendBuffered(reply.Length);
    }

    /// <summary>
    /// True when <paramref name="bytes"/> of buffer and <paramref name="vectors"/> vectors fit,
    /// after sending what the batch holds if need be. False (with the batch sent) when the reply
    /// can never fit: the caller sends it on its own, after any earlier chunks of the same reply,
    /// so a structured reply's chunks stay in order.
    /// </summary>
    private bool MakeRoom(int bytes, int vectors)
    {
        if (Fits(bytes, vectors))
            return true;
        Flush();
        return Fits(bytes, vectors);
    }

    // Gather replies are for zero-copy transports only; on the others every byte is in the buffer.
    private bool Fits(int bytes, int vectors) =>
        _used + bytes <= BufferSize && _vectorCount + vectors <= MaxVectors && _chunkCount + vectors <= MaxVectors;

    private static int VectorsFor(ReadOnlySpan<MemorySegment> segments)
    {
        int n = 0;
        int zeroes = SocketTransport.Zeroes.Length;
        foreach (var segment in segments)
            n += segment.Chunk is null ? (segment.Length + zeroes - 1) / zeroes : 1;
        return n;
    }

    private void AppendBuffered(int length)
    {
        AppendVector(_bufferAddress + _used, length);
        _used += length;
    }

    private unsafe void AppendSegments(ReadOnlySpan<MemorySegment> segments)
    {
        var zeroes = SocketTransport.Zeroes;
        nint zeroAddress = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(zeroes));
        foreach (var segment in segments)
        {
            if (segment.Chunk is null)
            {
                for (int left = segment.Length; left > 0; left -= zeroes.Length)
                    AppendVector(zeroAddress, Math.Min(left, zeroes.Length));
                continue;
            }
            // Pinned-heap arrays never move; holding the reference keeps the chunk alive until sent.
            _chunks[_chunkCount++] = segment.Chunk;
            nint chunk = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(segment.Chunk));
            AppendVector(chunk + segment.Offset, segment.Length);
        }
    }

    private void AppendVector(nint address, int length)
    {
        if (length == 0)
            return;
        _pending += length;
        if (_vectorCount > 0)
        {
            ref var last = ref _vectors[_vectorCount - 1];
            if (last.Base + (nint)last.Length == address)
            {
                last.Length += (nuint)length;
                return;
            }
        }
        _vectors[_vectorCount++] = new Libc.IoVec { Base = address, Length = (nuint)length };
    }
}
