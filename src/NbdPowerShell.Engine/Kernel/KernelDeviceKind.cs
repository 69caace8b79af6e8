using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// Devices of the kernel's nbd driver (/dev/nbdN): negotiated here, handed to the kernel through netlink (ioctl as
/// fallback). A TLS export is relayed by this process (the kernel takes plain sockets only), and an export of the
/// host itself is reached over a socketpair; both live as long as the owning process. A plain netlink device needs
/// nothing from its owner and is taken back after a restart by index and backend identifier.
/// </summary>
public sealed class KernelDeviceKind : IDeviceKind
{
    public const string KindName = "kernel";

    private readonly Supervision.SupervisedDeviceKind _supervised = new();

    public string Name => KindName;

    public async Task<IManagedDevice> AttachAsync(DeviceRequest request, DeviceContext context, CancellationToken cancellationToken)
    {
        // Persistent service devices and failover lists are supervised (reconnect after server loss); their record
        // says "supervised", so the service adopts them through that kind.
        if (Supervision.SupervisedDeviceKind.Wants(request, context.Scope))
            return await _supervised.AttachAsync(request, context, cancellationToken).ConfigureAwait(false);
        var settings = KernelDeviceSettings.From(request);
        var (result, uri) = await AttachAsync(settings, request.Index, context, cancellationToken).ConfigureAwait(false);
        var record = new DeviceRecord { Kind = KindName, Id = Guid.NewGuid().ToString("N")[..12], Device = result.Device, Settings = default };
        var device = new KernelDevice(record, settings with { Index = result.Index, BackendIdentifier = result.BackendIdentifier, Mode = result.Mode },
            request.Persistent, result.Relays, context);
        device.History.Add("Attached", $"{result.Device} attached to {uri} ({result.Mode}, {result.Connections} connection(s){(result.IsTlsRelayed ? ", TLS relayed here" : "")})");
        return device;
    }

    public async Task<IManagedDevice> AdoptAsync(DeviceRecord record, DeviceContext context, CancellationToken cancellationToken)
    {
        var settings = record.SettingsAs<KernelDeviceSettings>();
        settings.Validate();
        var info = NbdDeviceDiscovery.System().GetDevice(settings.Index);
        if (info is { IsConnected: true })
        {
            if (settings.BackendIdentifier is null || info.BackendIdentifier != settings.BackendIdentifier)
                throw new NbdDeviceBusyException(settings.Index,
                    $"{info.Device} is attached to {info.BackendIdentifier ?? "something without a backend identifier"} now, not to {settings.Uri}; the record is kept, remove it with Disconnect-NbdDevice -Device {info.Device}.");
            var adopted = new KernelDevice(record, settings, persistent: true, relays: [], context);
            string? lost = settings.NeedsOwner
                ? $"its {(settings.LocalExport is null ? "TLS relay" : "socketpair to the service's export")} ended with the previous service process, so its I/O fails; Disconnect-NbdDevice it and connect again"
                : null;
            adopted.MarkAdopted(lost);
            return adopted;
        }
        // Gone (a reboot, or someone disconnected it): attach it again, on the same index when that is free.
        int? index = info is not null && info.Pid is null ? settings.Index : null;
        var (result, uri) = await AttachAsync(settings, index, context, cancellationToken).ConfigureAwait(false);
        var device = new KernelDevice(record with { Device = result.Device },
            settings with { Index = result.Index, BackendIdentifier = result.BackendIdentifier, Mode = result.Mode }, persistent: true, result.Relays, context);
        device.History.Add("Reattached", $"{record.Device ?? "the device"} was not attached any more; attached {uri} again as {result.Device}");
        if (result.Index != settings.Index)
            context.RecordChanged();
        return device;
    }

    private static async Task<(AttachResult Result, NbdUri Uri)> AttachAsync(KernelDeviceSettings settings, int? index, DeviceContext context, CancellationToken ct)
    {
        settings.Validate();
        var uri = NbdUri.Parse(settings.Uri);
        var timeout = settings.TimeoutSeconds is int t ? TimeSpan.FromSeconds(t) : (TimeSpan?)null;
        bool tls = settings.LocalExport is null && (uri.Tls || settings.Tls is not null);
        var options = NbdClientOptions.Default with
        {
            Timeout = timeout ?? NbdClientOptions.Default.Timeout,
            Tls = tls ? settings.Tls?.Load() ?? NbdClientTlsOptions.Default : null,
        };
        var connections = new List<NbdNegotiatedConnection>();
        try
        {
            for (int i = 0; i < settings.Connections; i++)
            {
                if (settings.LocalExport is { } export)
                {
                    // The host's own export: a socketpair inside this process, no TLS needed.
                    var (socket, _) = await context.Host.OpenLocalConnectionAsync(export, ct).ConfigureAwait(false);
                    connections.Add(await NbdClient.NegotiateAsync(socket, uri.WithTls(false), options, ct).ConfigureAwait(false));
                }
                else
                {
                    connections.Add(await NbdClient.ConnectAsync(uri, options, ct).ConfigureAwait(false));
                }
            }
            var attach = new AttachOptions
            {
                Index = index,
                BlockSize = settings.BlockSize,
                Timeout = timeout,
                DeadConnectionTimeout = settings.DeadConnectionTimeoutSeconds is int d ? TimeSpan.FromSeconds(d) : null,
                ReadOnly = settings.ReadOnly,
                // The export's own URI (nbds:// when it needs TLS), so every process can tell what the device is.
                BackendIdentifier = uri.ToString(),
            };
            return (await new KernelAttacher(context.Log).AttachAsync(connections, attach, ct).ConfigureAwait(false), uri);
        }
        finally
        {
            // Connections the attach took over are detached already; the rest (on failure) close here.
            foreach (var c in connections)
                c.Dispose();
        }
    }
}

/// <summary>What the configuration keeps of a kernel device (camelCase JSON in its record's settings).</summary>
internal sealed record KernelDeviceSettings
{
    /// <summary>The export's URI as attached (nbds:// when TLS is used).</summary>
    public required string Uri { get; init; }
    /// <summary>An export of the owning host, reached over a socketpair.</summary>
    public string? LocalExport { get; init; }
    /// <summary>The device index it has (or had before a restart).</summary>
    public int Index { get; init; }
    /// <summary>What /sys/block/nbdN/backend showed after the attach (netlink devices): how the device is recognised after a restart.</summary>
    public string? BackendIdentifier { get; init; }
    public AttachMode Mode { get; init; }
    public ClientTlsSpec? Tls { get; init; }
    public bool ReadOnly { get; init; }
    public int? BlockSize { get; init; }
    public int? TimeoutSeconds { get; init; }
    public int? DeadConnectionTimeoutSeconds { get; init; }
    public int Connections { get; init; } = 1;

    /// <summary>The device depends on its owner process: a TLS relay, a socketpair to the owner's export, or an ioctl DO_IT thread.</summary>
    public bool NeedsOwner => LocalExport is not null || Mode == AttachMode.Ioctl || (Tls is not null || Uri.StartsWith("nbds", StringComparison.Ordinal));

    public static KernelDeviceSettings From(DeviceRequest request)
    {
        request.Validate();
        if (request.Uris.Count > 1)
            throw new ArgumentException("The kernel device kind attaches one export; several URIs (failover) need a supervised device.");
        return new KernelDeviceSettings
        {
            Uri = request.PrimaryUri.ToString(),
            LocalExport = request.LocalExport,
            Tls = request.Tls,
            ReadOnly = request.ReadOnly,
            BlockSize = request.BlockSize,
            TimeoutSeconds = request.TimeoutSeconds,
            DeadConnectionTimeoutSeconds = request.DeadConnectionTimeoutSeconds,
            Connections = request.Connections,
        };
    }

    public void Validate()
    {
        if (!NbdUri.TryParse(Uri, out _, out var error))
            throw new FormatException($"'{Uri}' is not an NBD URI: {error}");
        if (Index < 0 || Connections is < 1 or > 16)
            throw new FormatException("The device index must be 0 or more and connections 1..16.");
        Tls?.Validate();
    }
}
