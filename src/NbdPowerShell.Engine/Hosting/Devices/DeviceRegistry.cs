using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// The devices one host owns, and the kinds that make them: attaches through a kind by name, adopts recorded
/// devices after a restart (each on its own, so one bad record never stops the others), detaches, and reports a
/// status snapshot per device. Thread safe.
/// </summary>
public sealed class DeviceRegistry
{
    private readonly object _gate = new();
    private readonly Dictionary<string, IDeviceKind> _kinds = new(StringComparer.Ordinal);
    private readonly Dictionary<string, IManagedDevice> _devices = new(StringComparer.Ordinal);
    // One attach at a time per host: the idempotency check and the attach must not interleave.
    private readonly SemaphoreSlim _attachLock = new(1, 1);
    private readonly ILogger _log;

    public DeviceRegistry(NbdHost host, ILogger log)
    {
        _log = log;
        Context = new DeviceContext(host, log, () => Changed?.Invoke());
    }

    /// <summary>What the kinds get from this host.</summary>
    public DeviceContext Context { get; }

    /// <summary>Raised when the set of devices or a device's record changed (the service then rewrites its configuration).</summary>
    public event Action? Changed;

    /// <summary>Registers a device kind; a kind with the same name is replaced (so a richer kind can take over "kernel").</summary>
    public void AddKind(IDeviceKind kind)
    {
        lock (_gate)
            _kinds[kind.Name] = kind;
    }

    public IReadOnlyCollection<string> Kinds
    {
        get { lock (_gate) return _kinds.Keys.Order(StringComparer.Ordinal).ToArray(); }
    }

    /// <summary>
    /// Attaches a device through the request's kind. Unless <see cref="DeviceRequest.NewDevice"/>, a device of this
    /// registry that already serves the export is returned unchanged (Changed false).
    /// </summary>
    public async Task<HostResult<DeviceStatus>> AttachAsync(DeviceRequest request, CancellationToken cancellationToken)
    {
        request.Validate();
        IDeviceKind kind;
        lock (_gate)
        {
            if (!_kinds.TryGetValue(request.Kind, out kind!))
                throw new ArgumentException($"This host cannot attach devices of kind '{request.Kind}'; it knows {string.Join(", ", _kinds.Keys)}.");
        }
        await _attachLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!request.NewDevice && Find(d => d.Serves(request)) is { } existing)
                return new HostResult<DeviceStatus>(existing.GetStatus(), Changed: false);
            var device = await kind.AttachAsync(request, Context, cancellationToken).ConfigureAwait(false);
            lock (_gate)
                _devices[device.Id] = device;
            _log.LogInformation("Attached {Device} ({Kind}) for {Uri}", device.GetStatus().Device, kind.Name, string.Join(", ", request.Uris));
            if (device.IsPersistent)
                Changed?.Invoke();
            return new HostResult<DeviceStatus>(device.GetStatus(), Changed: true);
        }
        finally
        {
            _attachLock.Release();
        }
    }

    /// <summary>
    /// Takes back the devices of an earlier run, one by one. A record whose kind is unknown or whose adoption fails
    /// is kept (so the configuration loses nothing), shown as Failed, and returned as a problem.
    /// </summary>
    public async Task<IReadOnlyList<string>> AdoptAsync(IEnumerable<DeviceRecord> records, CancellationToken cancellationToken)
    {
        var problems = new List<string>();
        foreach (var record in records)
        {
            IDeviceKind? kind;
            lock (_gate)
                _kinds.TryGetValue(record.Kind, out kind);
            IManagedDevice device;
            if (kind is null)
            {
                string message = $"device {record.Id} ({record.Device ?? "no device"}) has kind '{record.Kind}', which this version does not know; its record is kept unchanged.";
                problems.Add(message);
                device = new UnadoptedDevice(record, message, Context.Scope);
            }
            else
            {
                try
                {
                    device = await kind.AdoptAsync(record, Context, cancellationToken).ConfigureAwait(false);
                    _log.LogInformation("Took back {Device} ({Kind}): {State}", record.Device ?? record.Id, record.Kind, device.GetStatus().State);
                }
                catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                {
                    string message = $"device {record.Id} ({record.Device ?? "no device"}, {record.Kind}) could not be taken back: {e.Message}";
                    problems.Add(message);
                    _log.LogWarning("{Problem}", message);
                    device = new UnadoptedDevice(record, message, Context.Scope);
                }
            }
            lock (_gate)
                _devices[device.Id] = device;
        }
        return problems;
    }

    public IReadOnlyList<DeviceStatus> GetStatus()
    {
        IManagedDevice[] all;
        lock (_gate)
            all = _devices.Values.ToArray();
        return all.Select(SafeStatus).OrderBy(s => s.Index ?? int.MaxValue).ThenBy(s => s.Device, StringComparer.Ordinal).ToArray();
    }

    private DeviceStatus SafeStatus(IManagedDevice device)
    {
        try
        {
            return device.GetStatus();
        }
        catch (Exception e)
        {
            // A kind's bug must not hide every other device from Get-NbdSession.
            _log.LogWarning("Status of device {Id} failed: {Message}", device.Id, e.Message);
            return new DeviceStatus { Id = device.Id, Kind = device.Record.Kind, Device = device.Record.Device, State = "Unknown", Message = e.Message, Scope = Context.Scope, ProcessId = Environment.ProcessId };
        }
    }

    /// <summary>The device with this node (/dev/nbd3) or id; null when this registry does not own it.</summary>
    public IManagedDevice? Find(string deviceOrId) =>
        Find(d => d.Id == deviceOrId || SafeStatus(d).Device == deviceOrId);

    private IManagedDevice? Find(Func<IManagedDevice, bool> predicate)
    {
        IManagedDevice[] all;
        lock (_gate)
            all = _devices.Values.ToArray();
        return all.FirstOrDefault(predicate);
    }

    /// <summary>Detaches a device this registry owns and forgets it. Returns its last status (State Disconnected).</summary>
    public async Task<DeviceStatus> DetachAsync(string deviceOrId, bool force, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var device = Find(deviceOrId) ?? throw new NbdDeviceNotFoundException(-1, $"{deviceOrId} is not a device of this host.");
        var before = SafeStatus(device);
        await device.DetachAsync(force, timeout, cancellationToken).ConfigureAwait(false);
        lock (_gate)
            _devices.Remove(device.Id);
        _log.LogInformation("Detached {Device}", before.Device ?? device.Id);
        if (device.IsPersistent)
            Changed?.Invoke();
        return before with { State = "Disconnected" };
    }

    /// <summary>Forgets a device without touching it (it vanished: someone else disconnected it).</summary>
    public bool Forget(string id)
    {
        bool removed;
        bool persistent;
        lock (_gate)
        {
            persistent = _devices.TryGetValue(id, out var device) && device.IsPersistent;
            removed = _devices.Remove(id);
        }
        if (removed && persistent)
            Changed?.Invoke();
        return removed;
    }

    /// <summary>The records the service writes to its configuration: every persistent device, adopted or not.</summary>
    public IReadOnlyList<DeviceRecord> PersistentRecords()
    {
        lock (_gate)
            return _devices.Values.Where(d => d.IsPersistent).Select(d => d.Record).OrderBy(r => r.Id, StringComparer.Ordinal).ToArray();
    }

    /// <summary>The host stops: every device lets go of this process's part (relays, sockets) and stays attached.</summary>
    public async Task ReleaseAllAsync()
    {
        IManagedDevice[] all;
        lock (_gate)
        {
            all = _devices.Values.ToArray();
            _devices.Clear();
        }
        foreach (var device in all)
        {
            try
            {
                await device.ReleaseAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                _log.LogWarning("Releasing device {Id} failed: {Message}", device.Id, e.Message);
            }
        }
    }
}
