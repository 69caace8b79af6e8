namespace NbdPowerShell.Engine.Protocol;

/// <summary>Flags the server sends right after IHAVEOPT.</summary>
[Flags]
public enum ServerHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

/// <summary>Flags the client answers with.</summary>
[Flags]
public enum ClientHandshakeFlags : uint
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}
