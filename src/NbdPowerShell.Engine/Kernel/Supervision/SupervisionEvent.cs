namespace NbdPowerShell.Engine.Kernel.Supervision;

public enum SupervisionEventKind
{
    /// <summary>The supervisor attached the device.</summary>
    Attached,
    /// <summary>The supervisor took over a device that was already attached (host restart).</summary>
    Adopted,
    /// <summary>A connection of the device died.</summary>
    ConnectionLost,
    /// <summary>A server was reached but refused: other size, flags, export or content.</summary>
    ServerRefused,
    /// <summary>New sockets were given to the kernel; the device is whole again on the same server.</summary>
    Reconnected,
    /// <summary>New sockets were given to the kernel on another server of the list.</summary>
    FailedOver,
    /// <summary>The dead-connection timeout passed without a server: the kernel fails I/O with EIO.</summary>
    Dead,
    /// <summary>The kernel refused a RECONFIGURE, or a reconnect failed for a reason that is not the server's.</summary>
    Error,
    /// <summary>Supervision stopped by the host.</summary>
    Stopped,
    /// <summary>The device is no longer connected (disconnected by someone), so supervision ended.</summary>
    DeviceDisconnected,
}

/// <summary>One entry of a supervised device's history ("what happened at 03:12").</summary>
/// <param name="Time">When it happened (UTC).</param>
/// <param name="Kind">What happened.</param>
/// <param name="Message">A sentence for people, with the reason.</param>
/// <param name="Server">The NBD URI involved, if any.</param>
public sealed record SupervisionEvent(DateTimeOffset Time, SupervisionEventKind Kind, string Message, string? Server = null);
