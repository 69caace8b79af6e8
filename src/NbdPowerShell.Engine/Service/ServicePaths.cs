namespace NbdPowerShell.Engine.Service;

/// <summary>
/// Where the service keeps its files. Both roots can be moved with environment variables (tests always do):
/// NBDPOWERSHELL_RUNTIME_DIR (default /run/nbdpowershell: control socket, lock, log of an on-demand start) and
/// NBDPOWERSHELL_CONFIG_DIR (default /etc/nbdpowershell: the configuration file).
/// </summary>
public sealed record ServicePaths
{
    public const string RuntimeVariable = "NBDPOWERSHELL_RUNTIME_DIR";
    public const string ConfigVariable = "NBDPOWERSHELL_CONFIG_DIR";
    public const string DefaultRuntimeDirectory = "/run/nbdpowershell";
    public const string DefaultConfigDirectory = "/etc/nbdpowershell";

    public ServicePaths(string runtimeDirectory, string configDirectory)
    {
        RuntimeDirectory = Path.GetFullPath(runtimeDirectory);
        ConfigDirectory = Path.GetFullPath(configDirectory);
    }

    /// <summary>The locations named by the environment, or the defaults.</summary>
    public static ServicePaths FromEnvironment() => new(
        NonEmpty(Environment.GetEnvironmentVariable(RuntimeVariable)) ?? DefaultRuntimeDirectory,
        NonEmpty(Environment.GetEnvironmentVariable(ConfigVariable)) ?? DefaultConfigDirectory);

    private static string? NonEmpty(string? value) => string.IsNullOrWhiteSpace(value) ? null : value;

    public string RuntimeDirectory { get; }
    public string ConfigDirectory { get; }

    /// <summary>The control socket (0600, root): the only way to talk to the service.</summary>
    public string ControlSocket => Path.Combine(RuntimeDirectory, "control.sock");

    /// <summary>Held (flock) by the running service, so a second one started at the same time exits.</summary>
    public string LockFile => Path.Combine(RuntimeDirectory, "service.lock");

    /// <summary>stdout and stderr of a service started on demand (under systemd they go to the journal).</summary>
    public string LogFile => Path.Combine(RuntimeDirectory, "service.log");

    /// <summary>The persistent exports and devices, human-readable JSON.</summary>
    public string ConfigurationFile => Path.Combine(ConfigDirectory, "nbdpowershell.json");

    public bool IsDefault => RuntimeDirectory == DefaultRuntimeDirectory && ConfigDirectory == DefaultConfigDirectory;
}
