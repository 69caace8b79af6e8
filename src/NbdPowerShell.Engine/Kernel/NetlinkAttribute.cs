using System.Buffers.Binary;
using System.Text;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>One parsed nlattr. Type has the NESTED/BYTEORDER flag bits removed.</summary>
internal readonly record struct NetlinkAttribute(ushort Type, byte[] Value)
{
    private const ushort TypeMask = 0x3fff;

    public byte GetU8() => Value[0];
    public ushort GetU16() => BinaryPrimitives.ReadUInt16LittleEndian(Value);
    public uint GetU32() => BinaryPrimitives.ReadUInt32LittleEndian(Value);
    public ulong GetU64() => BinaryPrimitives.ReadUInt64LittleEndian(Value);
    public string GetString() => Encoding.UTF8.GetString(Value).TrimEnd('\0');
    public IReadOnlyList<NetlinkAttribute> GetNested() => Parse(Value);

    /// <summary>Walks a run of attributes; a truncated trailing attribute is ignored like the kernel's nla_for_each_attr.</summary>
    public static IReadOnlyList<NetlinkAttribute> Parse(ReadOnlySpan<byte> data)
    {
        var result = new List<NetlinkAttribute>();
        int offset = 0;
        while (offset + NetlinkMessageBuilder.AttributeHeaderSize <= data.Length)
        {
            int length = BinaryPrimitives.ReadUInt16LittleEndian(data[offset..]);
            ushort type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(data[(offset + 2)..]) & TypeMask);
            if (length < NetlinkMessageBuilder.AttributeHeaderSize || offset + length > data.Length) break;
            result.Add(new NetlinkAttribute(type, data.Slice(offset + 4, length - 4).ToArray()));
            offset += NetlinkMessageBuilder.Align(length);
        }
        return result;
    }
}
