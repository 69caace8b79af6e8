namespace NbdPowerShell.Engine.Protocol;

/// <summary>Per-export flags sent with the export size. They drive the kernel's write-cache and discard settings, so they must be honest.</summary>
[Flags]
public enum TransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
}
