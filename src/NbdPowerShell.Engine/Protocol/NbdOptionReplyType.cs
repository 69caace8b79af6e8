namespace NbdPowerShell.Engine.Protocol;

/// <summary>Reply types for option negotiation; bit 31 marks an error.</summary>
public enum NbdOptionReplyType : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,

    ErrUnsupported = 0x80000001,
    ErrPolicy = 0x80000002,
    ErrInvalid = 0x80000003,
    ErrPlatform = 0x80000004,
    ErrTlsRequired = 0x80000005,
    ErrUnknown = 0x80000006,
    ErrShutdown = 0x80000007,
    ErrBlockSizeRequired = 0x80000008,
    ErrTooBig = 0x80000009,
    ErrExtendedHeaderRequired = 0x8000000A,
}

public static class NbdOptionReplyTypeExtensions
{
    public static bool IsError(this NbdOptionReplyType type) => ((uint)type & 0x80000000u) != 0;
}
