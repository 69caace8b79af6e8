namespace NbdPowerShell.Engine.Protocol;

/// <summary>Error values on the wire. They match Linux errno values; clients map unknown values to EINVAL.</summary>
public enum NbdError : uint
{
    None = 0,
    Perm = 1,
    IO = 5,
    NoMemory = 12,
    Invalid = 22,
    NoSpace = 28,
    Overflow = 75,
    NotSupported = 95,
    Shutdown = 108,
}

public static class NbdErrors
{
    /// <summary>Maps a Linux errno from a storage call to the value the protocol allows.</summary>
    public static NbdError FromErrno(int errno) => errno switch
    {
        0 => NbdError.None,
        1 or 13 or 30 => NbdError.Perm,          // EPERM, EACCES, EROFS
        28 or 122 or 27 => NbdError.NoSpace,     // ENOSPC, EDQUOT, EFBIG
        22 => NbdError.Invalid,
        12 => NbdError.NoMemory,
        95 => NbdError.NotSupported,
        75 => NbdError.Overflow,
        108 => NbdError.Shutdown,
        _ => NbdError.IO,
    };
}
