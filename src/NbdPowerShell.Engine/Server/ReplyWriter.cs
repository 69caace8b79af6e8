using System.Buffers.Binary;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Serializes replies from concurrent workers onto one transport. Each reply (or structured chunk)
/// is written whole under the lock: header and data in one vectored send, or the header followed
/// by file pages spliced through a pipe, or the header and the memory store's chunks in one
/// vectored send.
/// </summary>
internal sealed class ReplyWriter
{
    private readonly NbdTransport _transport;
    private readonly object _lock = new();
    private readonly byte[] _header = new byte[32];
    private bool _failed;

    public ReplyWriter(NbdTransport transport, FileReadSplicing splicing)
    {
        _transport = transport;
        SpliceFiles = transport.ZeroCopy && splicing switch
        {
            FileReadSplicing.Always => true,
            FileReadSplicing.Never => false,
            _ => !transport.PeerIsLocal,
        };
    }

    /// <summary>Replies can carry data from pinned memory without a copy in user space (plain sockets, not TLS).</summary>
    public bool ZeroCopy => _transport.ZeroCopy;

    /// <summary>Large file reads are spliced from the page cache to the socket (see <see cref="FileReadSplicing"/>).</summary>
    public bool SpliceFiles { get; }

    public void SimpleReply(ulong cookie, NbdError error, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            var h = SimpleHeader(cookie, error);
            Send(h, error == NbdError.None ? data : default);
        }
    }

    /// <summary>
    /// Successful simple READ reply whose data comes from a file. The first part is spliced into
    /// this thread's pipe before the lock, so waiting for the disk holds up no other reply, and a
    /// file error there (StorageException) still leaves room for an error reply.
    /// </summary>
    public void SimpleReplyFromFile(ulong cookie, int descriptor, long offset, int length)
    {
        var pipe = SplicePipe.ForThisThread();
        pipe.Fill(descriptor, offset, length);
        lock (_lock)
            SendFile(SimpleHeader(cookie, NbdError.None), pipe, descriptor, offset, length);
    }

    /// <summary>Successful simple READ reply whose data is a memory store's segments.</summary>
    public void SimpleReplyGather(ulong cookie, ReadOnlySpan<MemorySegment> segments)
    {
        lock (_lock)
            SendGather(SimpleHeader(cookie, NbdError.None), segments);
    }

    /// <summary>OFFSET_DATA chunk: header, u64 offset, then the data.</summary>
    public void DataChunk(ulong cookie, bool done, ulong offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
            Send(DataHeader(cookie, done, offset, data.Length), data);
    }

    /// <summary>OFFSET_DATA chunk whose data comes from a file (spliced as in <see cref="SimpleReplyFromFile"/>).</summary>
    public void DataChunkFromFile(ulong cookie, bool done, ulong offset, int descriptor, int length)
    {
        var pipe = SplicePipe.ForThisThread();
        pipe.Fill(descriptor, (long)offset, length);
        lock (_lock)
            SendFile(DataHeader(cookie, done, offset, length), pipe, descriptor, (long)offset, length);
    }

    /// <summary>OFFSET_DATA chunk whose data is a memory store's segments (<paramref name="length"/> bytes in all).</summary>
    public void DataChunkGather(ulong cookie, bool done, ulong offset, ReadOnlySpan<MemorySegment> segments, int length)
    {
        lock (_lock)
            SendGather(DataHeader(cookie, done, offset, length), segments);
    }

    /// <summary>OFFSET_HOLE chunk: u64 offset, u32 size.</summary>
    public void HoleChunk(ulong cookie, bool done, ulong offset, uint size)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize + 12);
            WriteChunkHeader(h, cookie, done, NbdReplyChunkType.OffsetHole, 12);
            BinaryPrimitives.WriteUInt64BigEndian(h[20..], offset);
            BinaryPrimitives.WriteUInt32BigEndian(h[28..], size);
            Send(h, default);
        }
    }

    /// <summary>ERROR chunk with no message; always the final chunk.</summary>
    public void ErrorChunk(ulong cookie, NbdError error)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize + 6);
            WriteChunkHeader(h, cookie, true, NbdReplyChunkType.Error, 6);
            BinaryPrimitives.WriteUInt32BigEndian(h[20..], (uint)error);
            BinaryPrimitives.WriteUInt16BigEndian(h[24..], 0);
            Send(h, default);
        }
    }

    /// <summary>BLOCK_STATUS chunk; <paramref name="descriptors"/> is already encoded as u32 id then {u32 length, u32 flags} pairs.</summary>
    public void BlockStatusChunk(ulong cookie, ReadOnlySpan<byte> descriptors)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize);
            WriteChunkHeader(h, cookie, true, NbdReplyChunkType.BlockStatus, descriptors.Length);
            Send(h, descriptors);
        }
    }

    private Span<byte> SimpleHeader(ulong cookie, NbdError error)
    {
        var h = _header.AsSpan(0, NbdLimits.SimpleReplyHeaderSize);
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(h[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        return h;
    }

    private Span<byte> DataHeader(ulong cookie, bool done, ulong offset, int length)
    {
        var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize + 8);
        WriteChunkHeader(h, cookie, done, NbdReplyChunkType.OffsetData, 8 + length);
        BinaryPrimitives.WriteUInt64BigEndian(h[20..], offset);
        return h;
    }

    private static void WriteChunkHeader(Span<byte> h, ulong cookie, bool done, NbdReplyChunkType type, int length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(h[4..], (ushort)(done ? NbdReplyChunkFlags.Done : NbdReplyChunkFlags.None));
        BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(h[16..], (uint)length);
    }

    private void Send(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body)
    {
        if (_failed)
            return;
        try
        {
            _transport.Write(head, body);
        }
        catch (IOException)
        {
            Fail();
        }
    }

    private void SendFile(ReadOnlySpan<byte> head, SplicePipe pipe, int descriptor, long offset, int length)
    {
        try
        {
            if (!_failed)
            {
                _transport.WriteFile(head, pipe, descriptor, offset, length);
                return;
            }
        }
        catch (IOException)
        {
            Fail();
        }
        pipe.Reset(); // what is left in it belongs to a reply that will never be sent
    }

    private void SendGather(ReadOnlySpan<byte> head, ReadOnlySpan<MemorySegment> segments)
    {
        if (_failed)
            return;
        try
        {
            _transport.WriteGather(head, segments);
        }
        catch (IOException)
        {
            Fail();
        }
    }

    /// <summary>The client is gone: later replies are dropped, and the reader notices and tears the connection down.</summary>
    private void Fail()
    {
        _failed = true;
        _transport.Shutdown();
    }
}
