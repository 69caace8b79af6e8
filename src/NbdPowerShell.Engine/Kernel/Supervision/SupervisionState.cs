namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>Where a supervised device stands.</summary>
public enum SupervisionState
{
    /// <summary>Every connection of the device is alive.</summary>
    Connected,
    /// <summary>A connection died; the kernel holds the device's I/O while the supervisor reconnects.</summary>
    Reconnecting,
    /// <summary>
    /// No server came back within the dead-connection timeout: I/O the kernel held has failed with EIO, and new I/O
    /// fails at once. The supervisor keeps trying; a later reconnect makes the device work again.
    /// </summary>
    Dead,
    /// <summary>Supervision was stopped by its host (the device itself is left as it is).</summary>
    Stopped,
    /// <summary>The device was disconnected (or now belongs to another backend); supervision ended.</summary>
    Disconnected,
}
