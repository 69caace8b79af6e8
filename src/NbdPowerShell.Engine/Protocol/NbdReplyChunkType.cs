namespace NbdPowerShell.Engine.Protocol;

/// <summary>Chunk types of structured replies. Codes 3 and 4 are unused (some headers wrongly define BLOCK_STATUS = 3).</summary>
public enum NbdReplyChunkType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = 0x8001,
    ErrorOffset = 0x8002,
}

[Flags]
public enum NbdReplyChunkFlags : ushort
{
    None = 0,
    Done = 1 << 0,
}

/// <summary>Flags of the base:allocation meta context.</summary>
[Flags]
public enum AllocationFlags : uint
{
    Data = 0,
    Hole = 1 << 0,
    Zero = 1 << 1,
}
