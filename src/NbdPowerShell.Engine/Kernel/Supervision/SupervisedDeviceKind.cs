using System.Text.Json;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// nbd devices under a <see cref="DeviceSupervisor"/>: attached through netlink with a dead-connection timeout,
/// reconnected after server loss and, for read-only images, failed over between the request's servers. The kernel
/// kind hands persistent service devices and failover lists here (<see cref="Wants"/>); the record keeps the
/// <see cref="SupervisionRecord"/> so the service supervises the device again after it restarts.
/// </summary>
public sealed class SupervisedDeviceKind : IDeviceKind
{
    public const string KindName = "supervised";

    /// <summary>Used when the request gives none: long enough to ride through a server reboot.</summary>
    public const int DefaultDeadConnectionTimeoutSeconds = 120;

    /// <summary>Requeue I/O of a dead connection after this long when the request gives no timeout.</summary>
    public const int DefaultRequestTimeoutSeconds = 10;

    private readonly DeviceSupervisorOptions _options;

    public SupervisedDeviceKind(DeviceSupervisorOptions? options = null) => _options = options ?? DeviceSupervisorOptions.Default;

    public string Name => KindName;

    /// <summary>
    /// Requests this kind attaches instead of the plain kernel kind: several servers (failover), or a persistent
    /// device of a remote export owned by the service (a process stays to supervise it). A host's own export over a
    /// socket pair has nothing to reconnect to.
    /// </summary>
    public static bool Wants(DeviceRequest request, HostScope scope) =>
        request.LocalExport is null && (request.Uris.Count > 1 || (request.Persistent && scope == HostScope.Service));

    public async Task<IManagedDevice> AttachAsync(DeviceRequest request, DeviceContext context, CancellationToken cancellationToken)
    {
        request.Validate();
        if (request.LocalExport is not null)
            throw new ArgumentException("A device of the host's own export is not supervised: it has no server to reconnect to.");
        if (request.DeadConnectionTimeoutSeconds is 0)
            throw new ArgumentException("A supervised device needs a dead-connection timeout of 1 second or more: with 0 the kernel fails I/O at once instead of waiting for the reconnect.");
        var supervisor = await DeviceSupervisor.AttachAsync(new SupervisedAttachRequest
        {
            Servers = request.Uris,
            ReadOnly = request.ReadOnly,
            Connections = request.Connections,
            RequestTimeoutSeconds = request.TimeoutSeconds ?? DefaultRequestTimeoutSeconds,
            DeadConnectionTimeoutSeconds = request.DeadConnectionTimeoutSeconds ?? DefaultDeadConnectionTimeoutSeconds,
            Tls = TlsFiles(request),
            Index = request.Index,
            BlockSize = request.BlockSize,
        }, context.Log, _options, ct: cancellationToken).ConfigureAwait(false);
        var record = new DeviceRecord { Kind = KindName, Id = Guid.NewGuid().ToString("N")[..12], Device = $"/dev/nbd{supervisor.Index}", Settings = SettingsOf(supervisor.Record) };
        return new SupervisedDevice(record, supervisor, request.Persistent, context);
    }

    public async Task<IManagedDevice> AdoptAsync(DeviceRecord record, DeviceContext context, CancellationToken cancellationToken)
    {
        var settings = SupervisionRecord.FromJson(record.Settings.GetRawText());
        try
        {
            var supervisor = await DeviceSupervisor.AdoptAsync(settings, context.Log, _options, ct: cancellationToken).ConfigureAwait(false);
            return new SupervisedDevice(record, supervisor, persistent: true, context);
        }
        catch (NbdDeviceNotFoundException)
        {
            // Gone (a reboot, or disconnected while the service was down): attach it again, on the same index when free.
            var info = NbdDeviceDiscovery.System().GetDevice(settings.Index);
            var supervisor = await DeviceSupervisor.AttachAsync(new SupervisedAttachRequest
            {
                Servers = settings.Servers,
                ReadOnly = settings.ReadOnly,
                Connections = settings.Connections,
                RequestTimeoutSeconds = settings.RequestTimeoutSeconds,
                DeadConnectionTimeoutSeconds = settings.DeadConnectionTimeoutSeconds,
                Tls = settings.Tls,
                Index = info is { IsConnected: false, Pid: null } ? settings.Index : null,
            }, context.Log, _options, ct: cancellationToken).ConfigureAwait(false);
            var reattached = record with { Device = $"/dev/nbd{supervisor.Index}", Settings = SettingsOf(supervisor.Record) };
            var device = new SupervisedDevice(reattached, supervisor, persistent: true, context);
            device.HostEvents.Add("Reattached", $"{record.Device ?? "the device"} was not attached any more; attached {supervisor.Snapshot().Server} again as {reattached.Device}");
            context.RecordChanged();
            return device;
        }
    }

    private static JsonElement SettingsOf(SupervisionRecord record)
    {
        using var document = JsonDocument.Parse(record.ToJson());
        return document.RootElement.Clone();
    }

    /// <summary>The supervisor reads TLS files again on every reconnect, so only files will do (no certificate objects).</summary>
    private static SupervisionTlsFiles? TlsFiles(DeviceRequest request)
    {
        bool tls = request.Tls is not null || request.Uris.Any(u => u.StartsWith("nbds", StringComparison.Ordinal));
        if (!tls)
            return null;
        var spec = request.Tls ?? new ClientTlsSpec();
        if (spec.HasObjects)
            throw new ArgumentException("A supervised device reconnects with TLS on its own, long after this call: give the client certificate as a file (-ClientCertificatePath), not as an object.");
        return new SupervisionTlsFiles
        {
            CertificateAuthorityPath = spec.CertificateAuthorityPath,
            ClientCertificatePath = spec.ClientCertificatePath,
            ClientKeyPath = spec.ClientKeyPath,
            SkipCertificateCheck = spec.SkipCertificateCheck,
        };
    }
}
