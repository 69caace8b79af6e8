namespace NbdPowerShell.Engine.Hosting;

/// <summary>Which process owns an export or a device.</summary>
public enum HostScope
{
    /// <summary>The PowerShell process that made it: it ends with that process.</summary>
    Process,
    /// <summary>The NbdPowerShell service: it outlives the shell that asked for it.</summary>
    Service,
}
