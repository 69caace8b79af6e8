namespace NbdPowerShell.Engine.Fuse;

/// <summary>FUSE_INIT capability bits (flags | flags2 &lt;&lt; 32), named as in &lt;linux/fuse.h&gt;.</summary>
[Flags]
internal enum FuseInitFlags : ulong
{
    None = 0,
    AsyncRead = 1UL << 0,
    BigWrites = 1UL << 5,
    DontMask = 1UL << 6,
    SpliceWrite = 1UL << 7,
    SpliceMove = 1UL << 8,
    SpliceRead = 1UL << 9,
    AutoInvalData = 1UL << 12,
    DoReadDirPlus = 1UL << 13,
    AsyncDio = 1UL << 15,
    WritebackCache = 1UL << 16,
    ParallelDirOps = 1UL << 18,
    HandleKillPriv = 1UL << 19,
    MaxPages = 1UL << 22,
    NoOpenDirSupport = 1UL << 24,
    InitExt = 1UL << 30,
}

/// <summary>fuse_open_out.open_flags (FOPEN_*).</summary>
[Flags]
internal enum FuseOpenFlags : uint
{
    None = 0,
    DirectIo = 1 << 0,
    KeepCache = 1 << 1,
    NonSeekable = 1 << 2,
    CacheDir = 1 << 3,
    NoFlush = 1 << 5,
    ParallelDirectWrites = 1 << 6,
}

/// <summary>fuse_setattr_in.valid (FATTR_*).</summary>
[Flags]
internal enum FuseSetAttrValid : uint
{
    Mode = 1 << 0,
    Uid = 1 << 1,
    Gid = 1 << 2,
    Size = 1 << 3,
    ATime = 1 << 4,
    MTime = 1 << 5,
    Fh = 1 << 6,
    ATimeNow = 1 << 7,
    MTimeNow = 1 << 8,
    LockOwner = 1 << 9,
    CTime = 1 << 10,
    KillSuidGid = 1 << 11,
}

/// <summary>fallocate(2) modes the kernel forwards in fuse_fallocate_in.mode (&lt;linux/falloc.h&gt;).</summary>
[Flags]
internal enum FallocateMode : uint
{
    Allocate = 0,
    KeepSize = 0x01,
    PunchHole = 0x02,
    NoHideStale = 0x04,
    CollapseRange = 0x08,
    ZeroRange = 0x10,
    InsertRange = 0x20,
    UnshareRange = 0x40,
    /// <summary>Linux 6.17: zero the range and keep it allocated as written extents.</summary>
    WriteZeroes = 0x80,
}
