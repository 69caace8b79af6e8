using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell;

/// <summary>The hosts the cmdlets hand their work to: this process's, and the NbdPowerShell service's.</summary>
internal static class Hosts
{
    /// <summary>Exports and in-process attachments of this pwsh process: they end with it.</summary>
    public static NbdHost Process { get; } = new(HostScope.Process, EngineLog.Default);

    /// <summary>The service's locations, read from the environment each time (so tests and scripts can move them).</summary>
    public static ServicePaths ServicePaths => ServicePaths.FromEnvironment();

    /// <summary>A client of the service at <see cref="ServicePaths"/>; it may not be running.</summary>
    public static ServiceClient Service => new(ServicePaths);

    /// <summary>The manifest of this module, which the service imports.</summary>
    public static string ModuleManifest => Path.Combine(Path.GetDirectoryName(typeof(Hosts).Assembly.Location)!, "NbdPowerShell.psd1");

    public static INbdHost For(HostScope scope) => scope == HostScope.Service ? Service : Process;
}
