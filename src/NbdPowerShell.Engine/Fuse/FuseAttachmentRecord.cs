namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// What is stored about one FUSE attachment in RUNTIME/fuse/ID.json, written before anything is mounted and
/// updated once the loop device is bound: enough to list it from another process, to clean it up after its owner
/// died, and to attach the same export again. Certificates and keys are never stored; a TLS attachment records
/// only that it used TLS (the service keeps where its certificates come from).
/// </summary>
public sealed record FuseAttachmentRecord
{
    public int Version { get; init; } = 1;
    public required string Id { get; init; }
    /// <summary>The export's NBD URI (nbds:// when TLS was used).</summary>
    public required string Uri { get; init; }
    public required string MountPoint { get; init; }
    /// <summary>The file in the FUSE mount the loop device reads and writes.</summary>
    public required string BackingFile { get; init; }
    /// <summary>Null until the loop device is bound (a crash in between leaves only the mount).</summary>
    public int? LoopIndex { get; init; }
    public string? LoopDevice => LoopIndex is int i ? $"/dev/loop{i}" : null;
    public required long Size { get; init; }
    public required int BlockSize { get; init; }
    public required bool ReadOnly { get; init; }
    public required int Connections { get; init; }
    /// <summary>Whether the loop driver runs in direct-I/O mode (what the kernel granted, not only what was asked).</summary>
    public bool DirectIo { get; init; }
    /// <summary>The owning process: pid and its start time (clock ticks since boot, /proc/PID/stat field 22), so a reused pid is not mistaken for it.</summary>
    public required int OwnerPid { get; init; }
    public required long OwnerStartTime { get; init; }
    public required DateTimeOffset AttachedAt { get; init; }
    /// <summary>The options it was attached with, to attach it again the same way.</summary>
    public required FuseAttachOptions Options { get; init; }
}
