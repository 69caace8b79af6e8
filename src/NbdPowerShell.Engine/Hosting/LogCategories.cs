namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// The logger categories of the engine, the same in a pwsh process (Verbose and Warning records) and in the
/// service (stderr, the journal under systemd), so a message reads the same wherever it came from.
/// </summary>
public static class LogCategories
{
    /// <summary>Exports starting and stopping, listeners.</summary>
    public const string Hosting = "NbdPowerShell.Hosting";
    /// <summary>Client connections, negotiation, refused clients.</summary>
    public const string Server = "NbdPowerShell.Server";
    /// <summary>Kernel devices: attach, detach, TLS relays, adoption.</summary>
    public const string Devices = "NbdPowerShell.Devices";
    /// <summary>The service process: start, configuration, shutdown.</summary>
    public const string Service = "NbdPowerShell.Service";
    /// <summary>The control socket: refused peers, malformed messages.</summary>
    public const string Control = "NbdPowerShell.Service.Control";
}
