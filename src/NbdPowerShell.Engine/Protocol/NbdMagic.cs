namespace NbdPowerShell.Engine.Protocol;

/// <summary>Magic numbers of the NBD wire protocol (doc/proto.md). All values are big-endian on the wire.</summary>
public static class NbdMagic
{
    /// <summary>"NBDMAGIC": first 8 bytes the server sends.</summary>
    public const ulong Init = 0x4e42444d41474943;
    /// <summary>"IHAVEOPT": newstyle negotiation marker, also prefixes every client option.</summary>
    public const ulong IHaveOpt = 0x49484156454F5054;
    /// <summary>Oldstyle negotiation magic; we never speak oldstyle but recognise it to give a clear error.</summary>
    public const ulong OldStyle = 0x00420281861253;
    /// <summary>Prefix of every option reply.</summary>
    public const ulong OptionReply = 0x3e889045565a9;
    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
}
