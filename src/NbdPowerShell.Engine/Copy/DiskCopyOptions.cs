using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Copy;

/// <summary>Settings of <see cref="DiskCopy"/> and <see cref="DiskHasher"/>.</summary>
public sealed record DiskCopyOptions
{
    public static DiskCopyOptions Default { get; } = new();

    /// <summary>Connections per NBD side when the server allows multi-conn (like nbdcopy). 1..16.</summary>
    public int Connections { get; init; } = 4;

    /// <summary>Bytes per read or write; 0 chooses from the servers' preferred and maximum sizes.</summary>
    public int RequestSize { get; init; }

    /// <summary>Blocks of this size that hold only zeroes are not written but zeroed (or skipped); 0 turns detection off.</summary>
    public int SparseBlockSize { get; init; } = 4096;

    /// <summary>Overwrite a destination that has content (an existing file, a device, an export with data).</summary>
    public bool Overwrite { get; init; }

    /// <summary>Flush the destination (fdatasync, NBD FLUSH) before reporting success.</summary>
    public bool Flush { get; init; }

    /// <summary>After copying, hash source and destination with <see cref="HashAlgorithm"/> and report whether they match.</summary>
    public bool Verify { get; init; }

    public HashAlgorithmName HashAlgorithm { get; init; } = HashAlgorithmName.SHA256;

    /// <summary>Connect timeout and TLS for NBD sides.</summary>
    public NbdClientOptions Client { get; init; } = NbdClientOptions.Default;

    /// <summary>Largest request size accepted from callers.</summary>
    public const int MaximumRequestSize = NbdBlockClient.DefaultMaximumRequestSize;

    /// <summary>
    /// What the copier uses unless the servers prefer more. Small enough that every worker's buffer stays in the CPU
    /// cache between the socket read and the write out (measured here: 256 KiB requests cost half the CPU time of
    /// 2 MiB ones), large enough that per-request costs vanish. nbdcopy uses the same size.
    /// </summary>
    internal const int DefaultRequestSize = 256 * 1024;
}
