namespace NbdPowerShell.Engine.Fuse;

/// <summary>How a <see cref="FuseDiskServer"/> presents its file and how much it takes on at once.</summary>
internal sealed record FuseDiskServerOptions
{
    /// <summary>The file is 0400 and refuses writes, flushes are answered without a round trip.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Threads reading requests from /dev/fuse. They only read and dispatch, so two keep up.</summary>
    public int Readers { get; init; } = 2;

    /// <summary>
    /// Requests served at once (told to the kernel as max_background, and the size of the buffer pool). Each holds
    /// a buffer of <see cref="MaxRequestBytes"/>, made on first need.
    /// </summary>
    public int MaxInFlight { get; init; } = 32;

    /// <summary>The largest READ or WRITE (max_write, max_read and max_pages): 1 MiB, the kernel's default page limit.</summary>
    public int MaxRequestBytes { get; init; } = 1 << 20;

    /// <summary>st_blksize and statfs f_bsize; the loop driver uses the latter as its discard granularity.</summary>
    public int BlockSize { get; init; } = 4096;

    /// <summary>Owner of the file and the directory: the mounting user (user_id/group_id of the mount).</summary>
    public uint Uid { get; init; }
    public uint Gid { get; init; }

    /// <summary>FOPEN_* flags of every open of the disk file.</summary>
    public FuseOpenFlags OpenFlags { get; init; } = FuseOpenFlags.DirectIo | FuseOpenFlags.ParallelDirectWrites;
}
