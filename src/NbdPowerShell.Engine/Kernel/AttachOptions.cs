namespace NbdPowerShell.Engine.Kernel;

public sealed record AttachOptions
{
    /// <summary>Device index (/dev/nbdN); null lets the kernel pick a free one (netlink) or picks the first free one (ioctl).</summary>
    public int? Index { get; init; }
    /// <summary>Logical block size, a power of two in 512..page size; null picks 4096 or less when the export demands it.</summary>
    public int? BlockSize { get; init; }
    /// <summary>Request timeout. With it a dead server fails I/O (after DeadConnectionTimeout); without it I/O waits forever.</summary>
    public TimeSpan? Timeout { get; init; }
    /// <summary>How long the kernel waits for a replacement socket before failing I/O (netlink only).</summary>
    public TimeSpan? DeadConnectionTimeout { get; init; }
    /// <summary>Make the disk read-only even if the export is writable.</summary>
    public bool ReadOnly { get; init; }
    /// <summary>Recorded in /sys/block/nbdN/backend (netlink only); by convention the export's NBD URI.</summary>
    public string? BackendIdentifier { get; init; }
    public AttachMode Mode { get; init; } = AttachMode.Auto;
    /// <summary>Bound on waiting for the device to show its size after CONNECT.</summary>
    public TimeSpan ReadyTimeout { get; init; } = TimeSpan.FromSeconds(30);
}
