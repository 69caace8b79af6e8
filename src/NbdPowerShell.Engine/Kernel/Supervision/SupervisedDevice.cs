using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>One supervised /dev/nbdN owned by a host: its record and its supervisor, reported as a <see cref="DeviceStatus"/>.</summary>
internal sealed class SupervisedDevice : IManagedDevice
{
    private readonly DeviceSupervisor _supervisor;
    private readonly DeviceContext _context;
    private volatile bool _detached;

    public SupervisedDevice(DeviceRecord record, DeviceSupervisor supervisor, bool persistent, DeviceContext context)
    {
        Record = record;
        _supervisor = supervisor;
        IsPersistent = persistent;
        _context = context;
    }

    public string Id => Record.Id;

    public DeviceRecord Record { get; }

    public bool IsPersistent { get; }

    /// <summary>What the host did with the device (Reattached, Detached), merged with the supervisor's history.</summary>
    public DeviceHistory HostEvents { get; } = new();

    public DeviceStatus GetStatus()
    {
        var s = _supervisor.Snapshot();
        var record = _supervisor.Record;
        string state = _detached ? "Disconnected" : s.State.ToString();
        string? message = _detached ? null : s.State switch
        {
            SupervisionState.Reconnecting => $"lost its server at {s.LastLossTime:u} ({s.LastLossReason}); I/O waits up to {record.DeadConnectionTimeoutSeconds} s while the service reconnects",
            SupervisionState.Dead => $"no server came back within {record.DeadConnectionTimeoutSeconds} s after {s.LastLossTime:u} ({s.LastLossReason}), so I/O fails with EIO; the service keeps trying (see History), or Disconnect-NbdDevice it",
            SupervisionState.Stopped => $"{s.Device} is no longer supervised by this process",
            SupervisionState.Disconnected => $"the kernel no longer has {s.Device} connected; Disconnect-NbdDevice -Device {s.Device} forgets it",
            _ => null,
        };
        return new DeviceStatus
        {
            Id = Id,
            Kind = SupervisedDeviceKind.KindName,
            Device = s.Device,
            Index = s.Index,
            State = state,
            Uri = record.Servers[0],
            ActiveUri = s.Server,
            Transport = s.TlsRelays > 0 ? "TLS relay" : "Plain",
            IsPersistent = IsPersistent,
            Scope = _context.Scope,
            ProcessId = Environment.ProcessId,
            Counters = new Dictionary<string, long>
            {
                ["Connections"] = record.Connections,
                ["Reconnects"] = s.ReconnectCount,
                ["Failovers"] = s.FailoverCount,
                ["DeadConnectionTimeoutSeconds"] = record.DeadConnectionTimeoutSeconds,
            },
            History = s.History.Select(e => new DeviceEvent(e.Time, e.Kind.ToString(), e.Server is null ? e.Message : $"{e.Message} [{e.Server}]"))
                .Concat(HostEvents.Snapshot()).OrderBy(e => e.Time).ToArray(),
            Message = message,
            LastLossTime = s.LastLossTime,
            LastLossReason = s.LastLossReason,
        };
    }

    public bool Serves(DeviceRequest request) =>
        request.Uris.Count > 0 && NbdUri.TryParse(request.Uris[0], out var wanted)
        && _supervisor.Record.ServerUris.Any(mine => DeviceRequest.SameExport(mine, wanted));

    public async Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken)
    {
        // Supervision first, so a disconnect is never taken for a loss to heal.
        await _supervisor.StopAsync().ConfigureAwait(false);
        await new KernelAttacher(_context.Log).DisconnectAsync(_supervisor.Index, force, timeout, cancellationToken).ConfigureAwait(false);
        await _supervisor.DisposeAsync().ConfigureAwait(false);
        _detached = true;
        HostEvents.Add("Detached", $"{Record.Device} disconnected");
    }

    /// <summary>The host stops: supervision ends, the device stays attached for the next service to adopt.</summary>
    public async Task ReleaseAsync() => await _supervisor.DisposeAsync().ConfigureAwait(false);
}
