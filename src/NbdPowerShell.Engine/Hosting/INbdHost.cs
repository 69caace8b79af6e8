using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// What the cmdlets ask of a host: the <see cref="NbdHost"/> of their own process, or the NbdPowerShell service
/// through its control socket (Service.ServiceClient). Both answer with the same records, so each output type is
/// mapped once, and both raise the same engine exceptions.
/// </summary>
public interface INbdHost
{
    HostScope Scope { get; }

    /// <summary>
    /// Serves an export: the same definition again returns the running one (Changed false), a different one is
    /// refused unless <paramref name="replace"/>. <paramref name="persistent"/> keeps it across restarts (service only).
    /// </summary>
    Task<HostResult<ExportInfo>> StartExportAsync(ExportSpec spec, bool replace, bool persistent, CancellationToken cancellationToken);

    Task<IReadOnlyList<ExportInfo>> GetExportsAsync(CancellationToken cancellationToken);

    /// <summary>Stops an export (and forgets a persistent one); refuses while clients are connected unless <paramref name="force"/>.</summary>
    Task<ExportInfo> StopExportAsync(string name, bool force, CancellationToken cancellationToken);

    /// <summary>Attaches a device (or returns the one of this host that already serves the export, Changed false).</summary>
    Task<HostResult<DeviceStatus>> AttachDeviceAsync(DeviceRequest request, CancellationToken cancellationToken);

    Task<IReadOnlyList<DeviceStatus>> GetDevicesAsync(CancellationToken cancellationToken);

    /// <summary>Detaches a device of this host, by node (/dev/nbd3) or id.</summary>
    Task<DeviceStatus> DetachDeviceAsync(string device, bool force, TimeSpan timeout, CancellationToken cancellationToken);
}
