using System.Reflection;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service.Messages;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The service's side of <see cref="INbdHost"/>: an <see cref="NbdHost"/> whose exports and persistent devices are
/// kept in the configuration file, restored at start, and forgotten when stopped or detached. Every change is
/// written to the file before it is acknowledged to the caller.
/// </summary>
public sealed class ServiceHost : INbdHost
{
    private readonly object _gate = new();
    // Persistent exports by name, running or not (one that failed to start is kept, with its error).
    private readonly Dictionary<string, (PersistedExport Export, string? Error)> _exports = new(StringComparer.OrdinalIgnoreCase);
    private readonly SemaphoreSlim _changes = new(1, 1);
    private readonly ConfigurationStore _store;
    private readonly ILogger _log;
    private readonly TaskCompletionSource<string> _stop = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private List<string> _problems = [];

    public ServiceHost(NbdHost host, ConfigurationStore store, ServicePaths paths, int shutdownGraceSeconds, ILogger log)
    {
        if (host.Scope != HostScope.Service)
            throw new ArgumentException("The service needs a host of scope Service.", nameof(host));
        Host = host;
        _store = store;
        Paths = paths;
        ShutdownGraceSeconds = shutdownGraceSeconds;
        _log = log;
        Host.Devices.Changed += () => Save();
    }

    public static string ModuleVersion { get; } =
        typeof(ServiceHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? typeof(ServiceHost).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    public NbdHost Host { get; }

    public ServicePaths Paths { get; }

    public HostScope Scope => HostScope.Service;

    public int ShutdownGraceSeconds { get; }

    public DateTimeOffset StartTime { get; } = DateTimeOffset.Now;

    /// <summary>What this start cleaned up of devices an earlier, crashed service left (FUSE mounts and loop devices).</summary>
    public IReadOnlyList<string> CleanedUp { get; internal set; } = [];

    /// <summary>Set once a stop began: requests that change something are refused from then on.</summary>
    public bool IsStopping => _stop.Task.IsCompleted;

    /// <summary>Completes with the reason when SIGTERM, SIGINT or a stop request arrives.</summary>
    public Task<string> StopRequested => _stop.Task;

    public void RequestStop(string reason) => _stop.TrySetResult(reason);

    /// <summary>Starts the configured exports and takes back the configured devices; returns what could not come back.</summary>
    public async Task<IReadOnlyList<string>> RestoreAsync(ServiceConfiguration configuration, CancellationToken cancellationToken)
    {
        var problems = new List<string>(configuration.Problems);
        foreach (var export in configuration.Exports)
        {
            string? error = null;
            try
            {
                var started = await Host.StartExportAsync(export.Spec, replace: false, export.BoundPort, cancellationToken).ConfigureAwait(false);
                _log.LogInformation("Restored export '{Name}' at {Uri}", export.Spec.Name, started.Value.Uri);
                if (export.BoundPort is int wanted && started.Value.Port != wanted && export.Spec.Listeners.Any(l => !l.IsUnix && l.Port == 0))
                    problems.Add($"export '{export.Spec.Name}' asked for any free port and had {wanted}, which is taken now; it listens on {started.Value.Port}.");
                lock (_gate)
                    _exports[export.Spec.Name] = (export with { BoundPort = BoundPortOf(export.Spec, started.Value) }, null);
            }
            catch (Exception e) when (ErrorIds.Classify(e) is not null)
            {
                error = e.Message;
                problems.Add($"export '{export.Spec.Name}' could not start: {e.Message}");
                _log.LogWarning("Export '{Name}' could not start: {Message}", export.Spec.Name, e.Message);
                lock (_gate)
                    _exports[export.Spec.Name] = (export, error);
            }
        }
        problems.AddRange(await Host.Devices.AdoptAsync(configuration.Devices, cancellationToken).ConfigureAwait(false));
        lock (_gate)
            _problems = problems;
        return problems;
    }

    /// <summary>The port a port-0 TCP listener got, so a restart can ask for it again.</summary>
    private static int? BoundPortOf(ExportSpec spec, ExportInfo info) =>
        spec.Listeners.Any(l => !l.IsUnix && l.Port == 0) ? info.Port : null;

    public async Task<HostResult<ExportInfo>> StartExportAsync(ExportSpec spec, bool replace, bool persistent, CancellationToken cancellationToken)
    {
        if (!persistent)
            throw new ArgumentException("The NbdPowerShell service only serves persistent exports; without -Persistent an export runs in the pwsh process that starts it.");
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate(persistent: true);
        await _changes.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var (wasKnown, known) = Known(spec.Name);
            // A persistent export that failed to start comes back with the same command; a different one needs -Force.
            if (wasKnown && known.Error is not null && Host.GetExport(spec.Name) is null && known.Export.Spec.DifferencesFrom(spec).Count > 0 && !replace)
                throw new Server.NbdServerException(Server.NbdServerError.ExportAlreadyExists,
                    $"A persistent export named '{spec.Name}' is configured with a different definition ({string.Join("; ", spec.DifferencesFrom(known.Export.Spec))}) and could not start ({known.Error}); use -Force to replace it.");
            var result = await Host.StartExportAsync(spec, replace, known.Export?.BoundPort, cancellationToken).ConfigureAwait(false);
            if (!result.Changed && wasKnown && known.Error is null)
                return new HostResult<ExportInfo>(Persistent(result.Value), Changed: false);
            lock (_gate)
                _exports[spec.Name] = (new PersistedExport(spec, BoundPortOf(spec, result.Value)), null);
            Save();
            return new HostResult<ExportInfo>(Persistent(result.Value), Changed: true);
        }
        finally
        {
            _changes.Release();
        }
    }

    private static ExportInfo Persistent(ExportInfo info) => info with { IsPersistent = true };

    /// <summary>For a change (under the change lock): refuses while stopping, then the persistent export of that name, if any.</summary>
    private (bool Found, (PersistedExport Export, string? Error) Entry) Known(string name)
    {
        ThrowIfStopping();
        lock (_gate)
            return _exports.TryGetValue(name, out var entry) ? (true, entry) : (false, default);
    }

    public Task<IReadOnlyList<ExportInfo>> GetExportsAsync(CancellationToken cancellationToken)
    {
        var running = Host.GetExports().Select(Persistent).ToList();
        lock (_gate)
        {
            foreach (var (export, error) in _exports.Values)
            {
                if (error is not null && !running.Any(r => string.Equals(r.Name, export.Spec.Name, StringComparison.OrdinalIgnoreCase)))
                    running.Add(Failed(export, error));
            }
        }
        return Task.FromResult<IReadOnlyList<ExportInfo>>(running.OrderBy(e => e.Name, StringComparer.OrdinalIgnoreCase).ToArray());
    }

    /// <summary>A configured export that is not running, described from its definition.</summary>
    private static ExportInfo Failed(PersistedExport export, string error) => new()
    {
        Name = export.Spec.Name,
        Description = export.Spec.Description,
        Path = export.Spec.Path,
        Size = export.Spec.MemorySize,
        IsReadOnly = export.Spec.ReadOnly,
        IsCopyOnWrite = export.Spec.CopyOnWrite,
        ListenAddress = export.Spec.Listeners.Where(l => !l.IsUnix).Select(l => l.Address!).ToArray(),
        Port = export.BoundPort ?? export.Spec.Listeners.FirstOrDefault(l => !l.IsUnix)?.Port ?? 0,
        SocketPath = export.Spec.Listeners.FirstOrDefault(l => l.IsUnix)?.SocketPath,
        Listeners = export.Spec.Listeners.Select(l => l.ToString()).ToArray(),
        AllowedClient = export.Spec.AllowedClients.ToArray(),
        MaxConnections = export.Spec.MaxConnections,
        State = "Failed",
        StatusMessage = error,
        TlsMode = export.Spec.Tls?.Mode.ToString() ?? "None",
        IsTlsOnly = export.Spec.TlsOnly,
        Scope = HostScope.Service,
        IsPersistent = true,
        ProcessId = Environment.ProcessId,
    };

    public async Task<ExportInfo> StopExportAsync(string name, bool force, CancellationToken cancellationToken)
    {
        await _changes.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var (wasKnown, known) = Known(name);
            ExportInfo stopped;
            if (Host.GetExport(name) is null && wasKnown)
                stopped = Failed(known.Export, known.Error ?? "not running") with { State = "Stopped" };
            else
                stopped = Persistent(await Host.StopExportAsync(name, force, cancellationToken).ConfigureAwait(false));
            lock (_gate)
                _exports.Remove(name);
            Save();
            return stopped;
        }
        finally
        {
            _changes.Release();
        }
    }

    public async Task<HostResult<DeviceStatus>> AttachDeviceAsync(DeviceRequest request, CancellationToken cancellationToken)
    {
        ThrowIfStopping();
        // The registry raises Changed (and so saves) for persistent devices before it returns.
        return await Host.AttachDeviceAsync(request, cancellationToken).ConfigureAwait(false);
    }

    public Task<IReadOnlyList<DeviceStatus>> GetDevicesAsync(CancellationToken cancellationToken) => Host.GetDevicesAsync(cancellationToken);

    public Task<DeviceStatus> DetachDeviceAsync(string device, bool force, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ThrowIfStopping();
        return Host.DetachDeviceAsync(device, force, timeout, cancellationToken);
    }

    public ServiceStatus GetStatus()
    {
        IReadOnlyList<string> problems;
        int exports;
        lock (_gate)
        {
            problems = _problems.ToArray();
            exports = _exports.Count;
        }
        return new ServiceStatus
        {
            ProcessId = Environment.ProcessId,
            Version = ModuleVersion,
            StartTime = StartTime,
            ControlSocket = Paths.ControlSocket,
            ConfigurationPath = Paths.ConfigurationFile,
            RuntimeDirectory = Paths.RuntimeDirectory,
            LogPath = Paths.LogFile,
            ExportCount = Math.Max(exports, Host.Count),
            DeviceCount = Host.Devices.GetStatus().Count,
            ShutdownGraceSeconds = ShutdownGraceSeconds,
            IsSystemdManaged = SystemdNotify.IsUnderSystemd,
            IsStopping = IsStopping,
            Problems = problems,
            CleanedUp = CleanedUp,
        };
    }

    /// <summary>Writes the configuration; a failure is logged and reported, the running state stays as it is.</summary>
    private void Save()
    {
        PersistedExport[] exports;
        lock (_gate)
            exports = _exports.Values.Select(e => e.Export).ToArray();
        try
        {
            _store.Save(exports, Host.Devices.PersistentRecords());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.LogError("Writing {Path} failed: {Message}", _store.Path, e.Message);
            throw new NbdHostException(ErrorIds.IOError, $"The change is in effect but could not be saved to {_store.Path} ({e.Message}), so it will not survive a service restart.", e);
        }
    }

    private void ThrowIfStopping()
    {
        if (IsStopping)
            throw new NbdHostException(ErrorIds.ServiceUnavailable, "The NbdPowerShell service is shutting down and takes no new work; start it again (Start-NbdService) and retry.");
    }
}
