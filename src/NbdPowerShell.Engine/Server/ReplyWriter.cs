using System.Buffers.Binary;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Serializes replies from concurrent workers onto one transport. Each reply (or structured chunk)
/// is written whole under the lock, header and data in one vectored send.
/// </summary>
internal sealed class ReplyWriter
{
    private readonly NbdTransport _transport;
    private readonly object _lock = new();
    private readonly byte[] _header = new byte[32];
    private bool _failed;

    public ReplyWriter(NbdTransport transport) => _transport = transport;

    /// <summary>True once a send failed; later replies are dropped because the peer is gone.</summary>
    public bool Failed => Volatile.Read(ref _failed);

    public void SimpleReply(ulong cookie, NbdError error, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.SimpleReplyHeaderSize);
            BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.SimpleReply);
            BinaryPrimitives.WriteUInt32BigEndian(h[4..], (uint)error);
            BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
            Send(h, error == NbdError.None ? data : default);
        }
    }

    /// <summary>OFFSET_DATA chunk: header, u64 offset, then the data.</summary>
    public void DataChunk(ulong cookie, bool done, ulong offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize + 8);
            WriteChunkHeader(h, cookie, done, NbdReplyChunkType.OffsetData, 8 + data.Length);
            BinaryPrimitives.WriteUInt64BigEndian(h[20..], offset);
            Send(h, data);
        }
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

    /// <summary>NONE chunk that ends a reply whose earlier chunks were not marked done.</summary>
    public void DoneChunk(ulong cookie)
    {
        lock (_lock)
        {
            var h = _header.AsSpan(0, NbdLimits.StructuredReplyHeaderSize);
            WriteChunkHeader(h, cookie, true, NbdReplyChunkType.None, 0);
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
            // The client is gone; the reader notices and tears the connection down.
            Volatile.Write(ref _failed, true);
            _transport.Shutdown();
        }
    }
}
