namespace NbdPowerShell.Engine.Protocol;

/// <summary>Sizes and caps used by both server and client.</summary>
public static class NbdLimits
{
    public const int DefaultPort = 10809;
    /// <summary>Largest READ/WRITE payload we serve; advertised as the maximum in INFO_BLOCK_SIZE.</summary>
    public const int MaxPayload = 64 * 1024 * 1024;
    /// <summary>Past this a payload is not drained but the connection is dropped: the length is absurd.</summary>
    public const long AbsurdPayload = 256L * 1024 * 1024;
    public const int PreferredBlockSize = 4096;
    /// <summary>The spec caps strings (names, descriptions, queries) at 4096 bytes.</summary>
    public const int MaxStringLength = 4096;
    /// <summary>Longest option payload we read; longer ones are drained (up to DrainOptionLimit) and answered with ERR_TOO_BIG.</summary>
    public const int MaxOptionLength = 64 * 1024;
    public const int DrainOptionLimit = 1024 * 1024;
    /// <summary>nbd-client only reads option reply payloads below 4 KiB; longer ones desync it.</summary>
    public const int MaxOptionReplyPayload = 4095;
    /// <summary>A DF read must be served in one chunk up to at least this size.</summary>
    public const int DfMinimum = 64 * 1024;
    public const int RequestHeaderSize = 28;
    public const int SimpleReplyHeaderSize = 16;
    public const int StructuredReplyHeaderSize = 20;
    public const int OptionHeaderSize = 16;
    public const int OptionReplyHeaderSize = 20;
}
