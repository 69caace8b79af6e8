using System.Buffers.Binary;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>The reply and chunk headers, written into whatever buffer the reply goes out from.</summary>
internal static class ReplyHeaders
{
    /// <summary>Bytes before an OFFSET_DATA chunk's data: chunk header and u64 offset.</summary>
    public const int DataChunkSize = NbdLimits.StructuredReplyHeaderSize + 8;
    public const int HoleChunkSize = NbdLimits.StructuredReplyHeaderSize + 12;
    public const int ErrorChunkSize = NbdLimits.StructuredReplyHeaderSize + 6;

    public static Span<byte> Simple(Span<byte> buffer, ulong cookie, NbdError error)
    {
        var h = buffer[..NbdLimits.SimpleReplyHeaderSize];
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(h[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        return h;
    }

    public static Span<byte> Data(Span<byte> buffer, ulong cookie, bool done, ulong offset, int length)
    {
        var h = buffer[..DataChunkSize];
        Chunk(h, cookie, done, NbdReplyChunkType.OffsetData, 8 + length);
        BinaryPrimitives.WriteUInt64BigEndian(h[20..], offset);
        return h;
    }

    public static Span<byte> Hole(Span<byte> buffer, ulong cookie, bool done, ulong offset, uint size)
    {
        var h = buffer[..HoleChunkSize];
        Chunk(h, cookie, done, NbdReplyChunkType.OffsetHole, 12);
        BinaryPrimitives.WriteUInt64BigEndian(h[20..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(h[28..], size);
        return h;
    }

    /// <summary>ERROR chunk with no message; always the final chunk.</summary>
    public static Span<byte> Error(Span<byte> buffer, ulong cookie, NbdError error)
    {
        var h = buffer[..ErrorChunkSize];
        Chunk(h, cookie, true, NbdReplyChunkType.Error, 6);
        BinaryPrimitives.WriteUInt32BigEndian(h[20..], (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(h[24..], 0);
        return h;
    }

    /// <summary>BLOCK_STATUS chunk header for <paramref name="length"/> bytes of encoded descriptors.</summary>
    public static Span<byte> BlockStatus(Span<byte> buffer, ulong cookie, int length)
    {
        var h = buffer[..NbdLimits.StructuredReplyHeaderSize];
        Chunk(h, cookie, true, NbdReplyChunkType.BlockStatus, length);
        return h;
    }

    private static void Chunk(Span<byte> h, ulong cookie, bool done, NbdReplyChunkType type, int length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(h[4..], (ushort)(done ? NbdReplyChunkFlags.Done : NbdReplyChunkFlags.None));
        BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(h[16..], (uint)length);
    }
}
