namespace NbdPowerShell.Engine.Fuse;

/// <summary>How <see cref="FuseAttacher"/> attaches an export through FUSE and a loop device.</summary>
public sealed record FuseAttachOptions
{
    /// <summary>Connections used when the export allows several (CAN_MULTI_CONN) and <see cref="Connections"/> is not set.</summary>
    public const int DefaultMultiConnections = 4;

    /// <summary>NBD connections to open; null takes <see cref="DefaultMultiConnections"/> where the export allows multi-conn, else 1.</summary>
    public int? Connections { get; init; }

    /// <summary>Attach read-only even if the export is writable (a read-only export always attaches read-only).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Logical block size of the loop device; null picks it like the nbd attach does (4096 unless the export needs less).</summary>
    public int? BlockSize { get; init; }

    /// <summary>Let the loop driver use direct I/O on the FUSE file, so pages are not cached twice (in the loop device and the file).</summary>
    public bool DirectIo { get; init; } = true;

    /// <summary>FUSE requests served at once (each holds a 1 MiB buffer while it runs).</summary>
    public int MaxInFlight { get; init; } = 32;
}
