using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>One /dev/nbdN as sysfs, netlink STATUS and the mount table describe it, whoever attached it.</summary>
public sealed record NbdDeviceInfo
{
    public required string Device { get; init; }
    public required int Index { get; init; }
    public required bool IsConnected { get; init; }
    /// <summary>Size in bytes (sysfs size × 512); 0 when not connected.</summary>
    public required long Size { get; init; }
    public required int BlockSize { get; init; }
    public required bool IsReadOnly { get; init; }
    /// <summary>Content of /sys/block/nbdN/backend (netlink devices only); null when absent or empty.</summary>
    public string? BackendIdentifier { get; init; }
    /// <summary>The backend identifier parsed as an NBD URI, when it is one.</summary>
    public NbdUri? Uri { get; init; }
    public string? Host => Uri is { IsUnix: false } u ? u.Host : null;
    public int? Port => Uri is { IsUnix: false } u ? u.Port : null;
    public string? ExportName => Uri?.ExportName;
    public string? SocketPath => Uri?.SocketPath;
    /// <summary>Number of sockets (one blk-mq hardware queue each); null when not visible.</summary>
    public int? Connections { get; init; }
    /// <summary>Request timeout from debugfs; null when debugfs is not mounted or not connected.</summary>
    public int? TimeoutSeconds { get; init; }
    public IReadOnlyList<string> MountPoints { get; init; } = [];
    /// <summary>Holders of the device or its partitions (dm-N, md, ...).</summary>
    public IReadOnlyList<string> Holders { get; init; } = [];
    public IReadOnlyList<string> Partitions { get; init; } = [];
    /// <summary>/sys/block/nbdN/pid: the DO_IT caller (ioctl) or the netlink caller, which may be long gone.</summary>
    public int? Pid { get; init; }
    /// <summary>Netlink when a backend file exists, Ioctl when only the pid file does; null when not connected.</summary>
    public AttachMode? Mode { get; init; }
    /// <summary>True when this process holds the device through an ioctl DO_IT thread.</summary>
    public bool IsOwnedByThisProcess { get; init; }
    public bool IsInUse => MountPoints.Count > 0 || Holders.Count > 0;
}
