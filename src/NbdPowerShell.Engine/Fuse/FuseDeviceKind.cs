using System.Text.Json;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// Devices without the nbd driver: the export served as a file in a FUSE mount of this process, bound to /dev/loopN
/// (<see cref="FuseAttacher"/>). Only the NbdPowerShell service registers this kind, because the FUSE server must
/// outlive the pwsh that asked for the device. Nothing of a FUSE device survives its owner: after a crash the next
/// service start cleans up what was left (<see cref="CleanUpAsync"/>), and a persistent one is attached again.
/// </summary>
public sealed class FuseDeviceKind : IDeviceKind, IAsyncDisposable
{
    public const string KindName = "fuse";

    private readonly FuseAttacher _attacher;

    /// <param name="runtimeDirectory">The service's runtime directory; its fuse/ subdirectory holds the mounts and records.</param>
    public FuseDeviceKind(string runtimeDirectory, ILogger logger) => _attacher = new FuseAttacher(runtimeDirectory, logger);

    public string Name => KindName;

    /// <summary>Removes the mounts and loop devices an earlier (crashed) owner left; the service calls it before taking devices back.</summary>
    public Task<FuseCleanupReport> CleanUpAsync(CancellationToken cancellationToken) => _attacher.CleanUpAsync(force: false, cancellationToken);

    public async Task<IManagedDevice> AttachAsync(DeviceRequest request, DeviceContext context, CancellationToken cancellationToken)
    {
        var settings = FuseDeviceSettings.From(request);
        var attachment = await AttachAsync(settings, cancellationToken).ConfigureAwait(false);
        var record = new DeviceRecord { Kind = KindName, Id = attachment.Id, Device = attachment.LoopDevice, Settings = DeviceRecord.ToSettings(settings) };
        var device = new FuseDevice(record, settings, request.Persistent, attachment, context.Scope);
        device.History.Add("Attached", $"{attachment.LoopDevice} attached to {settings.Uri} through FUSE ({attachment.Connections} connection(s), {(attachment.IsReadOnly ? "read-only" : "read-write")}, direct I/O {(attachment.DirectIo ? "on" : "off")})");
        return device;
    }

    /// <summary>
    /// A FUSE device ends with the process that served it, and the start-up cleanup removed its remains; so a
    /// persistent one is attached again (a new loop device), under the same id.
    /// </summary>
    public async Task<IManagedDevice> AdoptAsync(DeviceRecord record, DeviceContext context, CancellationToken cancellationToken)
    {
        var settings = record.SettingsAs<FuseDeviceSettings>();
        settings.Validate();
        var attachment = await AttachAsync(settings, cancellationToken).ConfigureAwait(false);
        var device = new FuseDevice(record with { Device = attachment.LoopDevice }, settings, persistent: true, attachment, context.Scope);
        device.History.Add("Reattached", $"{record.Device ?? "the device"} ended with the previous service process; attached {settings.Uri} again as {attachment.LoopDevice}");
        if (record.Device != attachment.LoopDevice)
            context.RecordChanged();
        return device;
    }

    private Task<FuseAttachment> AttachAsync(FuseDeviceSettings settings, CancellationToken ct)
    {
        settings.Validate();
        var uri = NbdUri.Parse(settings.Uri);
        var client = NbdClientOptions.Default with
        {
            Timeout = settings.TimeoutSeconds is int t ? TimeSpan.FromSeconds(t) : NbdClientOptions.Default.Timeout,
            Tls = uri.Tls || settings.Tls is not null ? settings.Tls?.Load() ?? NbdClientTlsOptions.Default : null,
        };
        var options = new FuseAttachOptions { Connections = settings.Connections, ReadOnly = settings.ReadOnly, BlockSize = settings.BlockSize };
        return _attacher.AttachAsync(uri, options, client, ct);
    }

    /// <summary>Detaches every device this kind serves (forced): the service process is going away.</summary>
    public ValueTask DisposeAsync() => _attacher.DisposeAsync();
}

/// <summary>What the configuration keeps of a FUSE device (camelCase JSON in its record's settings).</summary>
internal sealed record FuseDeviceSettings
{
    /// <summary>The export's URI (nbds:// when TLS is used).</summary>
    public required string Uri { get; init; }
    public ClientTlsSpec? Tls { get; init; }
    public bool ReadOnly { get; init; }
    public int? BlockSize { get; init; }
    public int? TimeoutSeconds { get; init; }
    /// <summary>Null: four where the export allows multi-conn, else one.</summary>
    public int? Connections { get; init; }

    public static FuseDeviceSettings From(DeviceRequest request)
    {
        request.Validate();
        if (request.Uris.Count > 1)
            throw new ArgumentException("A FUSE device attaches one export; several URIs (failover) are not supported with -Driver Fuse.");
        if (request.Index is not null)
            throw new ArgumentException("-Device names an nbd device; a FUSE device gets the first free loop device, so omit -Device with -Driver Fuse.");
        var options = request.Options is { ValueKind: JsonValueKind.Object } o
            ? o.Deserialize<FuseDeviceRequestOptions>(DeviceJson.Options) ?? new FuseDeviceRequestOptions()
            : new FuseDeviceRequestOptions();
        return new FuseDeviceSettings
        {
            // An export of the service itself is reached through its listener: the FUSE server is a normal NBD client.
            Uri = request.PrimaryUri.ToString(),
            Tls = request.Tls,
            ReadOnly = request.ReadOnly,
            BlockSize = request.BlockSize,
            TimeoutSeconds = request.TimeoutSeconds,
            Connections = options.ChooseConnections ? null : request.Connections,
        };
    }

    public void Validate()
    {
        if (!NbdUri.TryParse(Uri, out _, out var error))
            throw new FormatException($"'{Uri}' is not an NBD URI: {error}");
        if (Connections is < 1 or > 16)
            throw new FormatException("Connections must be 1..16.");
        Tls?.Validate();
    }
}

/// <summary>The FUSE kind's extras in <see cref="DeviceRequest.Options"/>.</summary>
public sealed record FuseDeviceRequestOptions
{
    /// <summary>The caller did not choose a connection count: use several where the export allows multi-conn.</summary>
    public bool ChooseConnections { get; init; }

    public JsonElement ToJson() => DeviceRecord.ToSettings(this);
}

/// <summary>One FUSE attachment owned by the service: /dev/loopN, its FUSE file and its NBD connections.</summary>
internal sealed class FuseDevice(DeviceRecord record, FuseDeviceSettings settings, bool persistent, FuseAttachment attachment, HostScope scope) : IManagedDevice
{
    public string Id => Record.Id;

    public DeviceRecord Record { get; } = record;

    public bool IsPersistent { get; } = persistent;

    public DeviceHistory History { get; } = new();

    public DeviceStatus GetStatus()
    {
        LoopDeviceInfo? loop = null;
        try
        {
            loop = attachment.Device;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NbdKernelException)
        {
        }
        var stats = attachment.Statistics;
        (string state, string? message) = (attachment.IsServing, loop) switch
        {
            (false, _) => ("Broken", $"its FUSE file system {attachment.MountPoint} was unmounted from outside, so I/O on {attachment.LoopDevice} fails; Disconnect-NbdDevice -Device {attachment.LoopDevice} -Force"),
            (true, null) => ("Disconnected", $"{attachment.LoopDevice} was unbound from outside; Disconnect-NbdDevice -Device {attachment.LoopDevice} ends its FUSE file system"),
            _ => ("Connected", null),
        };
        return new DeviceStatus
        {
            Id = Id,
            Kind = FuseDeviceKind.KindName,
            Device = attachment.LoopDevice,
            Index = attachment.LoopIndex,
            State = state,
            Message = message,
            Uri = settings.Uri,
            ActiveUri = settings.Uri,
            Transport = "FUSE",
            IsPersistent = IsPersistent,
            Scope = scope,
            ProcessId = Environment.ProcessId,
            Size = loop?.Size ?? attachment.Size / attachment.BlockSize * attachment.BlockSize,
            BlockSize = attachment.BlockSize,
            IsReadOnly = attachment.IsReadOnly,
            MountPoints = loop?.MountPoints ?? [],
            BackingFile = attachment.BackingFile,
            Counters = new Dictionary<string, long>
            {
                ["Reads"] = stats.Reads,
                ["Writes"] = stats.Writes,
                ["Flushes"] = stats.Flushes,
                ["Zeroes"] = stats.Zeroes,
                ["BytesRead"] = stats.BytesRead,
                ["BytesWritten"] = stats.BytesWritten,
                ["Errors"] = stats.Errors,
                ["InFlight"] = stats.InFlight,
                ["PeakInFlight"] = stats.PeakInFlight,
                ["Reconnects"] = stats.Reconnects,
                ["Connections"] = attachment.Connections,
            },
            History = History.Snapshot(),
        };
    }

    public bool Serves(DeviceRequest request) =>
        request.Kind == FuseDeviceKind.KindName && attachment.IsServing
        && request.ReadOnly == settings.ReadOnly
        && NbdUri.TryParse(settings.Uri, out var mine) && DeviceRequest.SameExport(mine, request.PrimaryUri);

    public Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken) =>
        attachment.DetachAsync(force, timeout, cancellationToken);

    /// <summary>A FUSE device cannot outlive the process serving it: take it down (forced) instead of leaving a dead mount.</summary>
    public async Task ReleaseAsync()
    {
        History.Add("Released", "the service stopped");
        await attachment.DetachAsync(force: true, timeout: TimeSpan.FromSeconds(5)).ConfigureAwait(false);
    }
}
