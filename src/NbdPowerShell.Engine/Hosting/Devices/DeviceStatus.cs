namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// A device as its owner reports it: what Get-NbdSession merges with what the kernel shows. Kinds fill what they
/// know; State is free text so kinds can add their own (the kernel kind uses Connected, Broken and Disconnected).
/// </summary>
public sealed record DeviceStatus
{
    public required string Id { get; init; }
    public required string Kind { get; init; }
    /// <summary>The block device, e.g. /dev/nbd3 or /dev/loop7.</summary>
    public string? Device { get; init; }
    /// <summary>The nbd index for nbd devices.</summary>
    public int? Index { get; init; }
    /// <summary>Connected, Broken (the owner lost what the device needs), Disconnected, Failed (could not be taken back), ...</summary>
    public string State { get; init; } = "Connected";
    /// <summary>The export the device was attached to.</summary>
    public string? Uri { get; init; }
    /// <summary>The server the device uses now (may differ from Uri after a failover).</summary>
    public string? ActiveUri { get; init; }
    /// <summary>How the device's connections reach the server, e.g. "Plain", "TLS relay", "Local socket pair".</summary>
    public string? Transport { get; init; }
    public bool IsPersistent { get; init; }
    public HostScope Scope { get; init; }
    /// <summary>The process that owns it (holds its relay, socketpair or FUSE server).</summary>
    public int ProcessId { get; init; }
    /// <summary>Kind-specific counters, e.g. bytes relayed, reconnects.</summary>
    public IReadOnlyDictionary<string, long> Counters { get; init; } = new Dictionary<string, long>();
    /// <summary>What happened to it, oldest first (bounded).</summary>
    public IReadOnlyList<DeviceEvent> History { get; init; } = [];
    /// <summary>Why it is not Connected, in words an admin can act on.</summary>
    public string? Message { get; init; }
    /// <summary>When a supervised device last lost a connection to its server.</summary>
    public DateTimeOffset? LastLossTime { get; init; }
    /// <summary>Why it lost it (server closed or reset the connection, a request timed out, ...).</summary>
    public string? LastLossReason { get; init; }
    /// <summary>Size, block size and mode as the owner sees them; null when the kernel's view is authoritative (nbd devices are read from sysfs).</summary>
    public long? Size { get; init; }
    public int? BlockSize { get; init; }
    public bool? IsReadOnly { get; init; }
    /// <summary>Where the device is mounted, when its owner reports it (FUSE devices).</summary>
    public IReadOnlyList<string>? MountPoints { get; init; }
    /// <summary>The file a loop device is bound to (FUSE devices: the export as a file in the FUSE mount).</summary>
    public string? BackingFile { get; init; }
}

/// <summary>One event in a device's life: attached, adopted, relay ended, reconnected, ...</summary>
public sealed record DeviceEvent(DateTimeOffset Time, string Event, string Message);

/// <summary>A bounded, thread-safe event list for a device's status.</summary>
public sealed class DeviceHistory
{
    public const int Capacity = 100;
    private readonly Queue<DeviceEvent> _events = new();

    public void Add(string @event, string message)
    {
        lock (_events)
        {
            _events.Enqueue(new DeviceEvent(DateTimeOffset.Now, @event, message));
            while (_events.Count > Capacity)
                _events.Dequeue();
        }
    }

    public IReadOnlyList<DeviceEvent> Snapshot()
    {
        lock (_events)
            return _events.ToArray();
    }
}
