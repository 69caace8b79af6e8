using System.Buffers.Binary;
using NbdPowerShell.Engine.Protocol;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>Reads the reply to a READ in either reply mode and assembles the data (holes read as zeroes).</summary>
internal static class ReadReplies
{
    /// <summary>Returns the error (None on success) and, on success, the <paramref name="length"/> bytes read at <paramref name="offset"/>.</summary>
    public static (NbdError Error, ulong Cookie, byte[] Data) ReadRead(this RawNbdClient c, bool structured, ulong offset, int length)
    {
        if (!structured)
            return c.ReadSimpleReply(length);
        var data = new byte[length];
        var error = NbdError.None;
        ulong cookie = 0;
        while (true)
        {
            var chunk = c.ReadChunk();
            cookie = chunk.Cookie;
            switch (chunk.Type)
            {
                case NbdReplyChunkType.OffsetData:
                {
                    ulong at = BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload);
                    Assert.InRange(at, offset, offset + (ulong)length);
                    chunk.Payload.AsSpan(8).CopyTo(data.AsSpan((int)(at - offset)));
                    break;
                }
                case NbdReplyChunkType.OffsetHole:
                {
                    ulong at = BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload);
                    uint size = BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload.AsSpan(8));
                    data.AsSpan((int)(at - offset), (int)size).Clear();
                    break;
                }
                case NbdReplyChunkType.Error:
                case NbdReplyChunkType.ErrorOffset:
                    error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload);
                    break;
                case NbdReplyChunkType.None:
                    // A simple reply (ReadChunk reports it as None with the error in the payload), or a closing NONE chunk.
                    if (chunk.Payload.Length == 4)
                    {
                        error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload);
                        if (error == NbdError.None)
                            data = c.ReadExactly(length);
                        return (error, cookie, error == NbdError.None ? data : Array.Empty<byte>());
                    }
                    break;
                default:
                    Assert.Fail($"unexpected chunk type {chunk.Type} in a READ reply");
                    break;
            }
            if ((chunk.Flags & (ushort)NbdReplyChunkFlags.Done) != 0)
                return (error, cookie, error == NbdError.None ? data : Array.Empty<byte>());
        }
    }
}
