using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>One /dev/nbdN owned by a host: its record, its TLS relays (if any) and what happened to it.</summary>
internal sealed class KernelDevice : IManagedDevice
{
    private readonly DeviceContext _context;
    private readonly IReadOnlyList<TlsRelay> _relays;
    private string? _lost;

    public KernelDevice(DeviceRecord record, KernelDeviceSettings settings, bool persistent, IReadOnlyList<TlsRelay> relays, DeviceContext context)
    {
        Settings = settings;
        Record = record with { Device = $"/dev/nbd{settings.Index}", Settings = DeviceRecord.ToSettings(settings) };
        IsPersistent = persistent;
        _relays = relays;
        _context = context;
        foreach (var relay in relays)
            _ = relay.Completion.ContinueWith(_ => History.Add("RelayEnded", $"a TLS relay of /dev/nbd{settings.Index} stopped: its connection to {settings.Uri} is gone"), TaskScheduler.Default);
    }

    public KernelDeviceSettings Settings { get; }

    public string Id => Record.Id;

    public DeviceRecord Record { get; }

    public bool IsPersistent { get; }

    public DeviceHistory History { get; } = new();

    private int Index => Settings.Index;

    /// <summary>Taken back after a restart; <paramref name="lost"/> says what the device lost with the previous process, if anything.</summary>
    public void MarkAdopted(string? lost)
    {
        _lost = lost;
        History.Add("Adopted", lost is null ? $"/dev/nbd{Index} taken back by the service" : $"/dev/nbd{Index} taken back, but {lost}");
    }

    public DeviceStatus GetStatus()
    {
        NbdDeviceInfo? info = null;
        try
        {
            info = NbdDeviceDiscovery.System().GetDevice(Index);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NbdKernelException)
        {
        }
        bool tls = _relays.Count > 0;
        string state;
        string? message = null;
        if (info is not { IsConnected: true })
        {
            state = "Disconnected";
            message = $"the kernel no longer has /dev/nbd{Index} connected; Disconnect-NbdDevice -Device /dev/nbd{Index} forgets it";
        }
        else if (_lost is not null || (tls && _relays.All(r => !r.IsRunning)))
        {
            state = "Broken";
            message = _lost ?? $"its TLS relay to {Settings.Uri} has ended, so I/O fails; Disconnect-NbdDevice it and connect again";
        }
        else if (Settings.LocalExport is { } export && _context.Host.GetExport(export) is null)
        {
            state = "Broken";
            message = $"export '{export}', which it reads and writes, has stopped, so I/O fails; Disconnect-NbdDevice -Device /dev/nbd{Index} -Force";
        }
        else
        {
            state = "Connected";
        }
        return new DeviceStatus
        {
            Id = Id,
            Kind = KernelDeviceKind.KindName,
            Device = $"/dev/nbd{Index}",
            Index = Index,
            State = state,
            Uri = Settings.Uri,
            ActiveUri = Settings.Uri,
            Transport = Settings.LocalExport is not null ? "Local socket pair" : tls || (_lost is not null && Settings.NeedsOwner) ? "TLS relay" : "Plain",
            IsPersistent = IsPersistent,
            Scope = _context.Scope,
            ProcessId = Environment.ProcessId,
            Counters = new Dictionary<string, long>
            {
                ["Connections"] = Settings.Connections,
                ["BytesToServer"] = _relays.Sum(r => r.BytesToServer),
                ["BytesToKernel"] = _relays.Sum(r => r.BytesToKernel),
            },
            History = History.Snapshot(),
            Message = message,
        };
    }

    public bool Serves(DeviceRequest request) =>
        request.Uris.Count > 0 && NbdUri.TryParse(request.Uris[0], out var wanted) && NbdUri.TryParse(Settings.Uri, out var mine)
        && DeviceRequest.SameExport(mine, wanted);

    public async Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken)
    {
        await new KernelAttacher(_context.Log).DisconnectAsync(Index, force, timeout, cancellationToken).ConfigureAwait(false);
        // The kernel has closed its ends: the relays forward NBD_CMD_DISC, end TLS and stop; force the stragglers.
        await Task.WhenAll(_relays.Select(r => r.StopAsync(TimeSpan.FromSeconds(5)))).ConfigureAwait(false);
        History.Add("Detached", $"/dev/nbd{Index} disconnected");
    }

    public Task ReleaseAsync()
    {
        foreach (var relay in _relays)
            relay.Stop();
        return Task.CompletedTask;
    }
}
