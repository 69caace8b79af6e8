namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>A consistent copy of a supervisor's status at one moment.</summary>
public sealed record SupervisionSnapshot
{
    public required int Index { get; init; }
    public string Device => $"/dev/nbd{Index}";
    public required string BackendIdentifier { get; init; }
    public required SupervisionState State { get; init; }
    /// <summary>NBD URI of the server the device's newest connection goes to; null before the first connection is known.</summary>
    public string? Server { get; init; }
    /// <summary>Connection losses healed so far (one per loss, whatever the number of sockets replaced).</summary>
    public int ReconnectCount { get; init; }
    /// <summary>Heals that moved the device to another server of the list.</summary>
    public int FailoverCount { get; init; }
    public DateTimeOffset? LastLossTime { get; init; }
    public string? LastLossReason { get; init; }
    public DateTimeOffset? LastReconnectTime { get; init; }
    /// <summary>Since when the device has been <see cref="SupervisionState.Dead"/>; null when it is not.</summary>
    public DateTimeOffset? DeadSince { get; init; }
    /// <summary>Connections relayed over TLS by this process (the kernel only takes plain sockets).</summary>
    public int TlsRelays { get; init; }
    /// <summary>The newest events, oldest first, bounded by <see cref="DeviceSupervisorOptions.HistoryCapacity"/>.</summary>
    public required IReadOnlyList<SupervisionEvent> History { get; init; }
}
