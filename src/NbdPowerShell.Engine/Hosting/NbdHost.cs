using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// The exports and devices one process owns. Exports run on one <see cref="NbdServer"/>: the host opens their
/// stores and keeps the listener registry (exports on the same address and port, or Unix socket, share one
/// listener and its TLS settings; a listener closes with its last export). Devices live in its
/// <see cref="DeviceRegistry"/>, which attaches through device kinds (the kernel nbd driver by default). The
/// cmdlets use one host in the pwsh process; the service uses one for what outlives the shell. Export names are
/// unique per host. Thread safe.
/// </summary>
public sealed class NbdHost : INbdHost
{
    private readonly object _gate = new();
    private readonly Dictionary<string, ListenerEntry> _listeners = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HostedExport> _exports = new(StringComparer.OrdinalIgnoreCase);
    private readonly ILogger _log;
    private readonly ILogger _serverLog;
    private readonly NbdServerOptions _options;
    private NbdServer _server;

    public NbdHost(HostScope scope, ILoggerFactory loggers, NbdServerOptions? options = null)
    {
        Scope = scope;
        _log = loggers.CreateLogger(LogCategories.Hosting);
        _serverLog = loggers.CreateLogger(LogCategories.Server);
        _options = options ?? new NbdServerOptions();
        _server = new NbdServer(_options, _serverLog);
        Devices = new DeviceRegistry(this, loggers.CreateLogger(LogCategories.Devices));
        Devices.AddKind(new KernelDeviceKind());
        Devices.AddKind(new Kernel.Supervision.SupervisedDeviceKind());
    }

    public HostScope Scope { get; }

    /// <summary>The devices this host owns and the kinds it can attach.</summary>
    public DeviceRegistry Devices { get; }

    private sealed class ListenerEntry(string key, Listener listener, ListenerSpec bound, string? clientHost, string tlsIdentity, bool tls)
    {
        public string Key { get; } = key;
        public Listener Listener { get; } = listener;
        /// <summary>The listener as bound (the real port when 0 was asked for).</summary>
        public ListenerSpec Bound { get; } = bound;
        /// <summary>The host a client on this machine uses to reach it; null for Unix sockets.</summary>
        public string? ClientHost { get; } = clientHost;
        public string TlsIdentity { get; } = tlsIdentity;
        public bool HasTls { get; } = tls;
        public HashSet<string> Exports { get; } = new(StringComparer.Ordinal);
    }

    private sealed class HostedExport(ExportSpec spec, TlsOptions? tls, IReadOnlyList<ListenerEntry> listeners, string backend, DateTimeOffset started)
    {
        public ExportSpec Spec { get; } = spec;
        public TlsOptions? Tls { get; } = tls;
        public IReadOnlyList<ListenerEntry> Listeners { get; } = listeners;
        public string Backend { get; } = backend;
        public DateTimeOffset Started { get; } = started;
        public TaskCompletionSource Stopped { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public ExportInfo? LastSnapshot { get; set; }
    }

    public int Count
    {
        get { lock (_gate) return _exports.Count; }
    }

    public IReadOnlyList<string> Names
    {
        get { lock (_gate) return _exports.Keys.Order(StringComparer.OrdinalIgnoreCase).ToArray(); }
    }

    /// <summary>
    /// Serves an export. The same definition under a name already served returns that export unchanged
    /// (Changed false); a different one is refused with ExportAlreadyExists unless <paramref name="replace"/>,
    /// which stops the old export (dropping its clients) and starts the new one. Throws engine exceptions.
    /// </summary>
    public Task<HostResult<ExportInfo>> StartExportAsync(ExportSpec spec, bool replace = false, CancellationToken cancellationToken = default) =>
        StartExportAsync(spec, replace, preferredPort: null, cancellationToken);

    /// <param name="preferredPort">For listeners that ask for port 0: try this port first (the one a persistent export had before a restart), then any.</param>
    public async Task<HostResult<ExportInfo>> StartExportAsync(ExportSpec spec, bool replace, int? preferredPort, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate(persistent: false);
        if (TryGetSame(spec, replace) is { } same)
            return new HostResult<ExportInfo>(same, Changed: false);
        if (replace && GetExport(spec.Name) is not null)
        {
            _log.LogInformation("Replacing export '{Name}' with a new definition", spec.Name);
            await StopExportAsync(spec.Name, force: true, cancellationToken).ConfigureAwait(false);
        }

        var tls = spec.Tls?.Load();
        var filter = spec.AllowedClients.Count > 0 ? AddressFilter.Parse(spec.AllowedClients) : null;
        IBlockStore store = StoreOpener.Open(spec);
        try
        {
            lock (_gate)
            {
                if (_exports.TryGetValue(spec.Name, out var raced))
                {
                    // Another caller started it while the store was opening.
                    if (raced.Spec.DifferencesFrom(spec).Count == 0)
                    {
                        store.Dispose();
                        return new HostResult<ExportInfo>(Describe(raced), Changed: false);
                    }
                    throw AlreadyExists(raced.Spec, spec);
                }
                var listeners = AcquireListeners(spec, tls, preferredPort);
                try
                {
                    _server.AddExport(new ExportDefinition(spec.Name, store)
                    {
                        TlsOnly = spec.TlsOnly,
                        Description = spec.Description,
                        ReadOnly = spec.ReadOnly,
                        MaxConnections = spec.MaxConnections,
                        AllowedClients = filter,
                        Listeners = listeners.Select(l => l.Listener).ToArray(),
                    });
                }
                catch
                {
                    ReleaseListeners(spec.Name, listeners);
                    throw;
                }
                foreach (var listener in listeners)
                    listener.Exports.Add(spec.Name);
                var hosted = new HostedExport(spec, tls, listeners, store.Description, DateTimeOffset.Now);
                _exports[spec.Name] = hosted;
                return new HostResult<ExportInfo>(Describe(hosted), Changed: true);
            }
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>The running export when it has exactly this definition; throws ExportAlreadyExists when it differs (and no replace).</summary>
    private ExportInfo? TryGetSame(ExportSpec spec, bool replace)
    {
        HostedExport? existing;
        lock (_gate)
            _exports.TryGetValue(spec.Name, out existing);
        if (existing is null)
            return null;
        if (existing.Spec.DifferencesFrom(spec).Count == 0)
            return Describe(existing);
        if (!replace)
            throw AlreadyExists(existing.Spec, spec);
        return null;
    }

    private NbdServerException AlreadyExists(ExportSpec existing, ExportSpec wanted) =>
        new(NbdServerError.ExportAlreadyExists,
            $"An export named '{wanted.Name}' is already served {Where} with a different definition ({string.Join("; ", wanted.DifferencesFrom(existing))}); " +
            $"use -Force to replace it, choose another -Name, or stop it first with Stop-NbdExport -Name '{wanted.Name}'.");

    private string Where => Scope == HostScope.Service ? "by the NbdPowerShell service" : "by this process";

    /// <summary>
    /// Finds or opens the listeners of an export (under the lock). Several TCP addresses given port 0 share the
    /// port the first one got. A listener shared with other exports must have the same TLS settings.
    /// </summary>
    private List<ListenerEntry> AcquireListeners(ExportSpec spec, TlsOptions? tls, int? preferredPort)
    {
        string tlsIdentity = DescribeTls(tls);
        var acquired = new List<ListenerEntry>();
        int? chosenPort = null;
        try
        {
            foreach (var wanted in spec.Listeners)
            {
                ListenerEntry entry;
                if (wanted.SocketPath is { } socketPath)
                {
                    string full = Path.GetFullPath(socketPath);
                    string key = "unix:" + full;
                    if (_listeners.TryGetValue(key, out var existing))
                        entry = RequireSameTls(existing, tlsIdentity, full);
                    else
                    {
                        var listener = _server.AddUnixListener(full, tls);
                        entry = Register(new ListenerEntry(key, listener, ListenerSpec.Unix(full), null, tlsIdentity, tls is not null));
                    }
                }
                else
                {
                    var address = IPAddress.Parse(wanted.Address!);
                    int port = wanted.Port == 0 && chosenPort is int p ? p : wanted.Port;
                    if (port != 0 && _listeners.TryGetValue(TcpKey(address, port), out var shared))
                        entry = RequireSameTls(shared, tlsIdentity, $"{wanted.Address}:{port}");
                    else
                    {
                        var listener = AddTcpListener(address, port == 0 ? preferredPort : null, port, tls);
                        int bound = ((IPEndPoint)listener.EndPoint).Port;
                        entry = Register(new ListenerEntry(TcpKey(address, bound), listener, ListenerSpec.Tcp(address.ToString(), bound),
                            ClientHost(address), tlsIdentity, tls is not null));
                    }
                    chosenPort ??= ((IPEndPoint)entry.Listener.EndPoint).Port;
                }
                acquired.Add(entry);
            }
            return acquired;
        }
        catch
        {
            ReleaseListeners(spec.Name, acquired);
            throw;
        }
    }

    /// <summary>Binds <paramref name="preferred"/> when given and free, otherwise <paramref name="port"/>.</summary>
    private Listener AddTcpListener(IPAddress address, int? preferred, int port, TlsOptions? tls)
    {
        if (preferred is int p && !_listeners.ContainsKey(TcpKey(address, p)))
        {
            try
            {
                return _server.AddTcpListener(new IPEndPoint(address, p), tls);
            }
            catch (NbdServerException e) when (e.Reason == NbdServerError.AddressInUse)
            {
                _log.LogWarning("Port {Port} on {Address} is taken now; listening on another free port", p, address);
            }
        }
        return _server.AddTcpListener(new IPEndPoint(address, port), tls);
    }

    private ListenerEntry Register(ListenerEntry entry)
    {
        _listeners[entry.Key] = entry;
        return entry;
    }

    /// <summary>Drops an export from its listeners (under the lock); a listener left without exports closes.</summary>
    private void ReleaseListeners(string export, IEnumerable<ListenerEntry> listeners)
    {
        foreach (var entry in listeners)
        {
            entry.Exports.Remove(export);
            if (entry.Exports.Count == 0 && _listeners.Remove(entry.Key))
                _server.RemoveListener(entry.Listener);
        }
    }

    private static string TcpKey(IPAddress address, int port) => $"tcp:{address}:{port}";

    /// <summary>TLS is a property of the listener, so every export on it must ask for the same settings.</summary>
    private static ListenerEntry RequireSameTls(ListenerEntry listener, string tlsIdentity, string where)
    {
        if (listener.TlsIdentity != tlsIdentity)
            throw new ArgumentException(
                $"Exports on {where} share one listener and must agree on TLS: it serves {listener.TlsIdentity}, this export asks for {tlsIdentity}. " +
                "Give the same -Certificate/-CertificatePath, -TlsMode and -ClientCertificateAuthority as the exports already there, or use another -Port or -SocketPath.");
        return listener;
    }

    /// <summary>Mode, certificate thumbprint and client authorities (never key material).</summary>
    private static string DescribeTls(TlsOptions? tls) =>
        tls is null
            ? "no TLS"
            : $"TLS {tls.Mode} with certificate {tls.ServerCertificate.Thumbprint}" +
              (tls.ClientCertificateAuthorities is { Count: > 0 } cas ? $" requiring client certificates from {string.Join(", ", cas.Select(c => c.Thumbprint).Order())}" : "");

    /// <summary>The host a client on this machine uses to reach a listener.</summary>
    private static string ClientHost(IPAddress address) =>
        address.Equals(IPAddress.Any) ? "127.0.0.1" : address.Equals(IPAddress.IPv6Any) ? "::1" : address.ToString();

    public IReadOnlyList<ExportInfo> GetExports()
    {
        HostedExport[] all;
        lock (_gate)
            all = _exports.Values.ToArray();
        return all.Select(Describe).OrderBy(e => e.Name, StringComparer.OrdinalIgnoreCase).ToArray();
    }

    public ExportInfo? GetExport(string name)
    {
        HostedExport? hosted;
        lock (_gate)
            _exports.TryGetValue(name, out hosted);
        return hosted is null ? null : Describe(hosted);
    }

    /// <summary>The definition an export was started with (what the service persists).</summary>
    public ExportSpec? GetSpec(string name)
    {
        lock (_gate)
            return _exports.TryGetValue(name, out var hosted) ? hosted.Spec : null;
    }

    /// <summary>
    /// Stops an export. With clients connected this refuses (NbdServerException ExportBusy) unless
    /// <paramref name="force"/>. A listener stops with its last export. Returns the export as it was.
    /// </summary>
    public async Task<ExportInfo> StopExportAsync(string name, bool force, CancellationToken cancellationToken = default)
    {
        var (hosted, server) = Served(name);
        var last = Describe(hosted);
        try
        {
            await server.RemoveExportAsync(hosted.Spec.Name, force, cancellationToken).ConfigureAwait(false);
        }
        catch (NbdServerException e) when (e.Reason == NbdServerError.ExportNotFound)
        {
            // Already gone from the server (an earlier, interrupted stop): just finish the bookkeeping.
        }
        catch (OperationCanceledException)
        {
            // The server finishes removing it in the background; forget it here so the name is free.
            Forget(hosted);
            throw;
        }
        Forget(hosted);
        return last with { State = "Stopped", ClientCount = 0 };
    }

    /// <summary>An export and the server it runs on; ExportNotFound when there is none of that name.</summary>
    private (HostedExport Hosted, NbdServer Server) Served(string name)
    {
        lock (_gate)
        {
            if (_exports.TryGetValue(name, out var hosted))
                return (hosted, _server);
        }
        throw new NbdServerException(NbdServerError.ExportNotFound, $"No export named '{name}' is served {Where}; Get-NbdExport lists them.");
    }

    private void Forget(HostedExport hosted)
    {
        lock (_gate)
        {
            if (_exports.TryGetValue(hosted.Spec.Name, out var current) && ReferenceEquals(current, hosted))
                _exports.Remove(hosted.Spec.Name);
            ReleaseListeners(hosted.Spec.Name, hosted.Listeners);
        }
        hosted.Stopped.TrySetResult();
    }

    /// <summary>Completes when the export stops; already completed when no such export exists.</summary>
    public Task WhenStopped(string name)
    {
        lock (_gate)
            return _exports.TryGetValue(name, out var hosted) ? hosted.Stopped.Task : Task.CompletedTask;
    }

    /// <summary>
    /// Opens an in-process connection to an export: a socketpair, one end served by this host without TLS
    /// (the bytes never leave the process), the other returned for negotiation and then the kernel.
    /// </summary>
    public Task<(Socket Client, NbdUri Uri)> OpenLocalConnectionAsync(string name, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var (hosted, server) = Served(name);
        var (client, serverEnd) = Libc.SocketPair();
        try
        {
            _ = server.ServeLocalSocket(serverEnd);
        }
        catch
        {
            client.Dispose();
            serverEnd.Dispose();
            throw;
        }
        return Task.FromResult((client, UriOf(hosted)));
    }

    Task<HostResult<ExportInfo>> INbdHost.StartExportAsync(ExportSpec spec, bool replace, bool persistent, CancellationToken cancellationToken)
    {
        if (persistent)
            throw new ArgumentException("Only the NbdPowerShell service keeps exports across restarts; this host serves them while its process runs.");
        return StartExportAsync(spec, replace, cancellationToken);
    }

    Task<IReadOnlyList<ExportInfo>> INbdHost.GetExportsAsync(CancellationToken cancellationToken) => Task.FromResult(GetExports());

    Task<ExportInfo> INbdHost.StopExportAsync(string name, bool force, CancellationToken cancellationToken) => StopExportAsync(name, force, cancellationToken);

    /// <summary>
    /// Attaches a device through the registry. In a pwsh process, a device that needs nothing from this process
    /// (a plain netlink device) is not kept: the kernel alone holds it, and it outlives the process.
    /// </summary>
    public async Task<HostResult<DeviceStatus>> AttachDeviceAsync(DeviceRequest request, CancellationToken cancellationToken = default)
    {
        if (request.Persistent && Scope != HostScope.Service)
            throw new ArgumentException("Only the NbdPowerShell service keeps devices across restarts.");
        var result = await Devices.AttachAsync(request, cancellationToken).ConfigureAwait(false);
        if (Scope == HostScope.Process && result.Changed && Devices.Find(result.Value.Id) is KernelDevice { Settings.NeedsOwner: false })
            Devices.Forget(result.Value.Id);
        return result;
    }

    public Task<IReadOnlyList<DeviceStatus>> GetDevicesAsync(CancellationToken cancellationToken = default) => Task.FromResult(Devices.GetStatus());

    public Task<DeviceStatus> DetachDeviceAsync(string device, bool force, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        Devices.DetachAsync(device, force, timeout, cancellationToken);

    /// <summary>The export a kernel device is attached to, judged by its backend identifier (the URI of any of the export's listeners).</summary>
    public string? ExportServing(string? backendIdentifier)
    {
        if (backendIdentifier is null || !NbdUri.TryParse(backendIdentifier, out var backend))
            return null;
        lock (_gate)
        {
            foreach (var hosted in _exports.Values)
                if (hosted.Listeners.Any(l => DeviceRequest.SameExport(UriOf(hosted, l), backend)))
                    return hosted.Spec.Name;
        }
        return null;
    }

    /// <summary>
    /// Stops every export (module removal, process exit, service shutdown): devices let go of what this process
    /// holds, listeners close, new requests are refused, in-flight ones finish within the grace period, file stores
    /// are flushed and closed. Returns one warning per kernel device that depended on them: its I/O fails from now
    /// on. <paramref name="devices"/> lists the kernel's devices (index, node, backend identifier, connected). The
    /// host can serve again afterwards.
    /// </summary>
    public IReadOnlyList<string> Shutdown(Func<IReadOnlyList<(int Index, string Device, string? Backend, bool Connected)>>? devices = null, TimeSpan? wait = null)
    {
        var warnings = new List<string>();
        var owned = Devices.GetStatus();
        if (Count > 0 || owned.Count > 0)
        {
            IReadOnlyList<(int Index, string Device, string? Backend, bool Connected)> attached = [];
            try
            {
                attached = devices?.Invoke() ?? [];
            }
            catch (Exception e)
            {
                _log.LogDebug("Could not list nbd devices while stopping: {Message}", e.Message);
            }
            string stopping = Scope == HostScope.Service ? "the NbdPowerShell service stopped" : "it stopped with the module";
            var warned = new HashSet<string>(StringComparer.Ordinal);
            foreach (var d in attached.Where(d => d.Connected))
            {
                if (ExportServing(d.Backend) is { } export && warned.Add(d.Device))
                    warnings.Add($"{d.Device} is still attached to export '{export}', and {stopping}: its I/O fails now. Unmount it and run Disconnect-NbdDevice -Device {d.Device} -Force.");
            }
            foreach (var d in owned.Where(d => d.Transport is "TLS relay" or "Local socket pair" && d.State == "Connected" && d.Device is not null))
            {
                if (warned.Add(d.Device!))
                    warnings.Add($"{d.Device} reached {d.Uri} through a {d.Transport!.ToLowerInvariant()} in this process, and {stopping}: its I/O fails now. Unmount it and run Disconnect-NbdDevice -Device {d.Device} -Force.");
            }
        }
        Devices.ReleaseAllAsync().Wait(wait ?? TimeSpan.FromSeconds(15));
        HostedExport[] all;
        NbdServer server;
        lock (_gate)
        {
            all = _exports.Values.ToArray();
            _exports.Clear();
            _listeners.Clear();
            server = _server;
            _server = new NbdServer(_options, _serverLog);
        }
        SafeStopAsync(server).Wait(wait ?? TimeSpan.FromSeconds(15));
        foreach (var hosted in all)
            hosted.Stopped.TrySetResult();
        return warnings;
    }

    private async Task SafeStopAsync(NbdServer server)
    {
        try
        {
            await server.StopAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            _log.LogWarning("Stopping the server failed: {Message}", e.Message);
        }
    }

    /// <summary>nbds:// when clients need TLS for this export (Require, or a TLS-only export), for its first listener.</summary>
    private static NbdUri UriOf(HostedExport hosted) => UriOf(hosted, hosted.Listeners[0]);

    private static NbdUri UriOf(HostedExport hosted, ListenerEntry listener)
    {
        bool tls = hosted.Tls is { } t && (t.Mode == TlsMode.Require || hosted.Spec.TlsOnly);
        return listener.Bound.SocketPath is { } path
            ? NbdUri.ForUnix(path, hosted.Spec.Name, tls)
            : NbdUri.ForTcp(listener.ClientHost!, listener.Bound.Port, hosted.Spec.Name, tls);
    }

    private ExportInfo Describe(HostedExport hosted)
    {
        var snapshot = _server.GetExport(hosted.Spec.Name);
        if (snapshot is null)
            return hosted.LastSnapshot ?? throw new InvalidOperationException("export vanished");
        var spec = hosted.Spec;
        var tcp = hosted.Listeners.Where(l => !l.Bound.IsUnix).ToList();
        var export = new ExportInfo
        {
            Name = spec.Name,
            Description = spec.Description,
            Path = spec.Path,
            Backend = hosted.Backend,
            Size = snapshot.Size,
            IsReadOnly = snapshot.IsReadOnly,
            IsCopyOnWrite = spec.CopyOnWrite,
            ListenAddress = tcp.Select(l => l.Bound.Address!).ToArray(),
            Port = tcp.Count > 0 ? tcp[0].Bound.Port : 0,
            SocketPath = hosted.Listeners.FirstOrDefault(l => l.Bound.IsUnix)?.Bound.SocketPath,
            Listeners = hosted.Listeners.Select(l => l.Bound.ToString()).ToArray(),
            AllowedClient = spec.AllowedClients.ToArray(),
            MaxConnections = spec.MaxConnections,
            State = "Running",
            ClientCount = snapshot.Connections.Count,
            TotalConnections = snapshot.TotalConnections,
            StartTime = hosted.Started,
            BytesRead = snapshot.Io.BytesRead,
            BytesWritten = snapshot.Io.BytesWritten,
            Uri = UriOf(hosted).ToString(),
            TlsMode = hosted.Tls?.Mode.ToString() ?? "None",
            IsTlsOnly = spec.TlsOnly,
            CertificateSubject = hosted.Tls?.ServerCertificate.Subject,
            CertificateThumbprint = hosted.Tls?.ServerCertificate.Thumbprint,
            RequiresClientCertificate = hosted.Tls?.ClientCertificateAuthorities is not null,
            Scope = Scope,
            ProcessId = Environment.ProcessId,
        };
        hosted.LastSnapshot = export;
        return export;
    }
}
