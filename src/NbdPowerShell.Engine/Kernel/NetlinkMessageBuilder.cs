using System.Buffers.Binary;
using System.Text;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// Builds one generic netlink request: nlmsghdr (16 bytes), genlmsghdr (4 bytes), then attributes.
/// Each nlattr is {u16 len, u16 type} + payload; len excludes the padding to the 4-byte boundary
/// (linux/netlink.h NLA_ALIGNTO). Integers are host order (little-endian on every platform we run on).
/// </summary>
internal sealed class NetlinkMessageBuilder
{
    public const int HeaderSize = 16;
    public const int GenlHeaderSize = 4;
    public const int AttributeHeaderSize = 4;
    /// <summary>NLA_F_NESTED: marks nested attributes; strict kernels demand it, lenient ones ignore it.</summary>
    public const ushort NestedFlag = 1 << 15;

    private readonly List<byte> _buffer = new(256);

    public NetlinkMessageBuilder(ushort type, ushort flags, uint sequence, byte command, byte version)
    {
        Span<byte> header = stackalloc byte[HeaderSize + GenlHeaderSize];
        // nlmsg_len is patched in ToArray; nlmsg_pid 0 lets the kernel fill in our port id.
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], type);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], sequence);
        header[16] = command;
        header[17] = version;
        _buffer.AddRange(header.ToArray());
    }

    public NetlinkMessageBuilder U8(ushort type, byte value) => Attribute(type, [value]);

    public NetlinkMessageBuilder U16(ushort type, ushort value)
    {
        var b = new byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        return Attribute(type, b);
    }

    public NetlinkMessageBuilder U32(ushort type, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return Attribute(type, b);
    }

    public NetlinkMessageBuilder U64(ushort type, ulong value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return Attribute(type, b);
    }

    /// <summary>NUL-terminated string, as nla_put_string writes it (NLA_STRING/NLA_NUL_STRING accept it).</summary>
    public NetlinkMessageBuilder String(ushort type, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value + "\0");
        return Attribute(type, bytes);
    }

    public NetlinkMessageBuilder Attribute(ushort type, ReadOnlySpan<byte> payload)
    {
        int start = _buffer.Count;
        _buffer.AddRange(new byte[AttributeHeaderSize]);
        _buffer.AddRange(payload.ToArray());
        PatchAttributeHeader(start, (ushort)(AttributeHeaderSize + payload.Length), type);
        Pad();
        return this;
    }

    /// <summary>Opens a nested attribute; pass the returned offset to <see cref="EndNested"/>.</summary>
    public int BeginNested(ushort type)
    {
        int start = _buffer.Count;
        _buffer.AddRange(new byte[AttributeHeaderSize]);
        PatchAttributeHeader(start, 0, (ushort)(type | NestedFlag));
        return start;
    }

    public NetlinkMessageBuilder EndNested(int start)
    {
        ushort type = (ushort)(_buffer[start + 2] | (_buffer[start + 3] << 8));
        PatchAttributeHeader(start, (ushort)(_buffer.Count - start), type);
        return this;
    }

    public byte[] ToArray()
    {
        var bytes = _buffer.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, (uint)bytes.Length);
        return bytes;
    }

    private void PatchAttributeHeader(int at, ushort length, ushort type)
    {
        _buffer[at] = (byte)length;
        _buffer[at + 1] = (byte)(length >> 8);
        _buffer[at + 2] = (byte)type;
        _buffer[at + 3] = (byte)(type >> 8);
    }

    private void Pad()
    {
        while (_buffer.Count % 4 != 0) _buffer.Add(0);
    }

    public static int Align(int length) => (length + 3) & ~3;
}
