namespace NbdPowerShell.Engine.Protocol;

/// <summary>Information items carried by NBD_REP_INFO during INFO and GO.</summary>
public enum NbdInfoType : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}
