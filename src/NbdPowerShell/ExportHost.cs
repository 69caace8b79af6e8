using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell;

/// <summary>What Start-NbdExport asks for, after binding.</summary>
internal sealed record ExportRequest
{
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    /// <summary>A resolved file or block device path; null for memory exports.</summary>
    public string? Path { get; init; }
    /// <summary>Size of a memory export in bytes.</summary>
    public long MemorySize { get; init; }
    public bool ReadOnly { get; init; }
    public bool CopyOnWrite { get; init; }
    public string ListenAddress { get; init; } = "127.0.0.1";
    public int Port { get; init; } = NbdLimits.DefaultPort;
    public string? SocketPath { get; init; }
    public IReadOnlyList<string> AllowedClient { get; init; } = [];
    public int MaxConnections { get; init; }
    /// <summary>Server TLS settings; null serves without TLS. Exports sharing a listener must agree on them.</summary>
    public TlsOptions? Tls { get; init; }
    /// <summary>Only TLS clients may see and open this export (SELECTIVETLS).</summary>
    public bool TlsOnly { get; init; }
}

/// <summary>
/// The exports this PowerShell process serves. Exports on the same TCP address and port share one
/// <see cref="NbdServer"/> (one listener); each Unix socket path has its own. A server stops when its last
/// export stops. Names are unique across the process, so -Name identifies one export. Thread safe.
/// </summary>
internal sealed class ExportHost
{
    private readonly object _gate = new();
    private readonly Dictionary<string, Listening> _servers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Hosted> _exports = new(StringComparer.OrdinalIgnoreCase);
    private readonly ILogger _log;
    private readonly Func<IBlockStore, IBlockStore> _copyOnWrite;

    public ExportHost(ILogger log, Func<IBlockStore, IBlockStore>? copyOnWrite = null)
    {
        _log = log;
        _copyOnWrite = copyOnWrite ?? StoreFactory.CopyOnWrite;
    }

    public static ExportHost Default { get; } = new(EngineLog.Default);

    private sealed class Listening(string key, NbdServer server, string? host, int port, string? socketPath, TlsOptions? tls)
    {
        public TlsOptions? Tls { get; } = tls;
        public string Key { get; } = key;
        public NbdServer Server { get; } = server;
        public string? Host { get; } = host;
        public int Port { get; } = port;
        public string? SocketPath { get; } = socketPath;
        public HashSet<string> Exports { get; } = new(StringComparer.Ordinal);
    }

    private sealed class Hosted(ExportRequest request, Listening listening, string backend, DateTimeOffset started)
    {
        public ExportRequest Request { get; } = request;
        public Listening Listening { get; } = listening;
        public string Backend { get; } = backend;
        public DateTimeOffset Started { get; } = started;
        public TaskCompletionSource Stopped { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public HashSet<int> LocalDevices { get; } = [];
        public NbdExport? LastSnapshot { get; set; }
    }

    public int Count
    {
        get { lock (_gate) return _exports.Count; }
    }

    /// <summary>Opens the store, finds or creates the listener and adds the export. Throws engine exceptions.</summary>
    public NbdExport Start(ExportRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.SocketPath is null && (request.Port < 0 || request.Port > 65535))
            throw new ArgumentOutOfRangeException(nameof(request), request.Port, "Port must be 0..65535.");
        lock (_gate)
        {
            if (_exports.ContainsKey(request.Name))
                throw new NbdServerException(NbdServerError.ExportAlreadyExists,
                    $"An export named '{request.Name}' is already served by this process; choose another -Name or stop it first with Stop-NbdExport -Name '{request.Name}'.");
        }
        var filter = request.AllowedClient.Count > 0 ? AddressFilter.Parse(request.AllowedClient) : null;
        IPAddress? address = null;
        if (request.SocketPath is null && !IPAddress.TryParse(request.ListenAddress, out address))
            throw new ArgumentException($"-ListenAddress '{request.ListenAddress}' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1 or ::).");

        IBlockStore store = OpenStore(request);
        try
        {
            lock (_gate)
            {
                if (_exports.ContainsKey(request.Name))
                    throw new NbdServerException(NbdServerError.ExportAlreadyExists,
                        $"An export named '{request.Name}' is already served by this process; choose another -Name or stop it first.");
                var listening = FindOrListen(request, address);
                var definition = new ExportDefinition(request.Name, store)
                {
                    TlsOnly = request.TlsOnly,
                    Description = request.Description,
                    ReadOnly = request.ReadOnly,
                    MaxConnections = request.MaxConnections,
                    AllowedClients = filter,
                };
                try
                {
                    listening.Server.AddExport(definition);
                }
                catch
                {
                    if (listening.Exports.Count == 0)
                        StopServerInBackground(listening);
                    throw;
                }
                listening.Exports.Add(request.Name);
                var hosted = new Hosted(request, listening, store.Description, DateTimeOffset.Now);
                _exports[request.Name] = hosted;
                return Describe(hosted);
            }
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    private IBlockStore OpenStore(ExportRequest request)
    {
        IBlockStore store = request.Path is null
            ? new MemoryBlockStore(request.MemorySize)
            : FileBlockStore.Open(request.Path, readOnly: request.ReadOnly || request.CopyOnWrite);
        if (!request.CopyOnWrite)
            return store;
        try
        {
            return _copyOnWrite(store);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    private Listening FindOrListen(ExportRequest request, IPAddress? address)
    {
        var options = new NbdServerOptions { Tls = request.Tls };
        if (request.SocketPath is { } socketPath)
        {
            string full = System.IO.Path.GetFullPath(socketPath);
            string key = "unix:" + full;
            if (_servers.TryGetValue(key, out var existing))
                return RequireSameTls(existing, request, full);
            var server = new NbdServer(options, _log);
            try
            {
                server.ListenUnix(full);
            }
            catch
            {
                StopInBackground(server);
                throw;
            }
            var listening = new Listening(key, server, null, 0, full, request.Tls);
            _servers[key] = listening;
            return listening;
        }

        if (request.Port != 0 && _servers.TryGetValue(TcpKey(address!, request.Port), out var shared))
            return RequireSameTls(shared, request, $"{request.ListenAddress}:{request.Port}");
        var tcpServer = new NbdServer(options, _log);
        IPEndPoint bound;
        try
        {
            bound = tcpServer.ListenTcp(new IPEndPoint(address!, request.Port));
        }
        catch
        {
            StopInBackground(tcpServer);
            throw;
        }
        string tcpKey = TcpKey(address!, bound.Port);
        var tcp = new Listening(tcpKey, tcpServer, ClientHost(address!), bound.Port, null, request.Tls);
        _servers[tcpKey] = tcp;
        return tcp;
    }

    private static string TcpKey(IPAddress address, int port) => $"tcp:{address}:{port}";

    /// <summary>TLS is a property of the listener, so every export on it must ask for the same settings.</summary>
    private static Listening RequireSameTls(Listening listening, ExportRequest request, string where)
    {
        if (DescribeTls(listening.Tls) != DescribeTls(request.Tls))
            throw new ArgumentException(
                $"Exports on {where} share one listener and must agree on TLS: it serves {DescribeTls(listening.Tls)}, this export asks for {DescribeTls(request.Tls)}. " +
                "Give the same -Certificate/-CertificatePath, -TlsMode and -ClientCertificateAuthority as the exports already there, or use another -Port or -SocketPath.");
        return listening;
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

    public IReadOnlyList<NbdExport> GetExports()
    {
        Hosted[] all;
        lock (_gate)
            all = _exports.Values.ToArray();
        return all.Select(Describe).OrderBy(e => e.Name, StringComparer.OrdinalIgnoreCase).ToArray();
    }

    public NbdExport? GetExport(string name)
    {
        Hosted? hosted;
        lock (_gate)
            _exports.TryGetValue(name, out hosted);
        return hosted is null ? null : Describe(hosted);
    }

    public IReadOnlyList<string> Names
    {
        get { lock (_gate) return _exports.Keys.Order(StringComparer.OrdinalIgnoreCase).ToArray(); }
    }

    /// <summary>
    /// Stops an export. With clients connected this refuses (NbdServerException ExportBusy) unless
    /// <paramref name="force"/>. The listener stops with its last export. Returns the export as it was.
    /// </summary>
    public async Task<NbdExport> StopAsync(string name, bool force, CancellationToken cancellationToken = default)
    {
        Hosted? hosted;
        lock (_gate)
            _exports.TryGetValue(name, out hosted);
        if (hosted is null)
            throw new NbdServerException(NbdServerError.ExportNotFound, $"No export named '{name}' is served by this process; Get-NbdExport lists them.");
        var last = Describe(hosted);
        try
        {
            await hosted.Listening.Server.RemoveExportAsync(hosted.Request.Name, force, cancellationToken).ConfigureAwait(false);
        }
        catch (NbdServerException e) when (e.Reason == NbdServerError.ExportNotFound)
        {
            // Already gone from the server (an earlier, interrupted stop): just finish the bookkeeping.
        }
        catch (OperationCanceledException)
        {
            // The server finishes removing it in the background; forget it here so the name is free.
            Forget(hosted, waitForListener: false).GetAwaiter().GetResult();
            throw;
        }
        await Forget(hosted, waitForListener: true).ConfigureAwait(false);
        return Copy(last, "Stopped", 0);
    }

    /// <summary>Drops a stopped export from the host; the listener stops with its last export.</summary>
    private async Task Forget(Hosted hosted, bool waitForListener)
    {
        bool stopServer;
        lock (_gate)
        {
            _exports.Remove(hosted.Request.Name);
            hosted.Listening.Exports.Remove(hosted.Request.Name);
            stopServer = hosted.Listening.Exports.Count == 0 && _servers.Remove(hosted.Listening.Key);
        }
        hosted.Stopped.TrySetResult();
        if (stopServer)
        {
            var stop = SafeStopAsync(hosted.Listening.Server);
            if (waitForListener)
                await stop.ConfigureAwait(false);
        }
    }

    /// <summary>Completes when the export stops; already completed when no such export exists.</summary>
    public Task WhenStopped(string name)
    {
        lock (_gate)
            return _exports.TryGetValue(name, out var hosted) ? hosted.Stopped.Task : Task.CompletedTask;
    }

    /// <summary>
    /// Opens an in-process connection to an export: a connected pair of Unix stream sockets, one end served by
    /// the export's server, the other returned (for negotiation and then the kernel). No TCP is involved.
    /// </summary>
    public async Task<(Socket Client, NbdUri Uri)> OpenLocalConnectionAsync(string name, CancellationToken cancellationToken)
    {
        Hosted? hosted;
        lock (_gate)
            _exports.TryGetValue(name, out hosted);
        if (hosted is null)
            throw new NbdServerException(NbdServerError.ExportNotFound, $"No export named '{name}' is served by this process; Get-NbdExport lists them.");
        var (client, server) = await LocalSocketPair.CreateAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            _ = hosted.Listening.Server.ServeConnectedSocket(server);
        }
        catch
        {
            client.Dispose();
            server.Dispose();
            throw;
        }
        return (client, UriOf(hosted));
    }

    /// <summary>Remembers that a kernel device is attached to an export, so removal can warn about it.</summary>
    public void RecordLocalDevice(string name, int index)
    {
        lock (_gate)
        {
            if (_exports.TryGetValue(name, out var hosted))
                hosted.LocalDevices.Add(index);
        }
    }

    /// <summary>The export serving a kernel device, judged by the backend identifier (our URIs) or local attachment.</summary>
    public string? ExportServing(int index, string? backendIdentifier)
    {
        lock (_gate)
        {
            foreach (var hosted in _exports.Values)
            {
                if (hosted.LocalDevices.Contains(index) || (backendIdentifier is not null && backendIdentifier == UriOf(hosted).ToString()))
                    return hosted.Request.Name;
            }
        }
        return null;
    }

    /// <summary>
    /// Stops every export (module removal, process exit), dropping clients. Returns one warning per kernel
    /// device that was still attached to one of them: its I/O fails from now on.
    /// </summary>
    public IReadOnlyList<string> Shutdown(Func<IReadOnlyList<(int Index, string Device, string? Backend, bool Connected)>>? devices = null, TimeSpan? wait = null)
    {
        Hosted[] all;
        Listening[] servers;
        lock (_gate)
        {
            all = _exports.Values.ToArray();
            servers = _servers.Values.ToArray();
            _exports.Clear();
            _servers.Clear();
        }
        var warnings = new List<string>();
        if (all.Length == 0)
            return warnings;
        IReadOnlyList<(int Index, string Device, string? Backend, bool Connected)> attached = [];
        try
        {
            attached = devices?.Invoke() ?? [];
        }
        catch (Exception e)
        {
            _log.LogDebug("Could not list nbd devices while stopping exports: {Message}", e.Message);
        }
        foreach (var hosted in all)
        {
            string uri = UriOf(hosted).ToString();
            foreach (var d in attached.Where(d => d.Connected && (hosted.LocalDevices.Contains(d.Index) || d.Backend == uri)))
                warnings.Add($"{d.Device} is still attached to export '{hosted.Request.Name}', which stopped with the module: its I/O fails now. Unmount it and run Disconnect-NbdDevice -Device {d.Device} -Force.");
        }
        var stopping = Task.WhenAll(servers.Select(s => SafeStopAsync(s.Server)));
        stopping.Wait(wait ?? TimeSpan.FromSeconds(15));
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
            _log.LogWarning("Stopping a server failed: {Message}", e.Message);
        }
    }

    private void StopServerInBackground(Listening listening)
    {
        _servers.Remove(listening.Key);
        StopInBackground(listening.Server);
    }

    private void StopInBackground(NbdServer server) => _ = SafeStopAsync(server);

    /// <summary>nbds:// when clients need TLS for this export (Require, or a TLS-only export).</summary>
    private static NbdUri UriOf(Hosted hosted)
    {
        bool tls = hosted.Listening.Tls is { } t && (t.Mode == TlsMode.Require || hosted.Request.TlsOnly);
        return hosted.Listening.SocketPath is { } path
            ? NbdUri.ForUnix(path, hosted.Request.Name, tls)
            : NbdUri.ForTcp(hosted.Listening.Host!, hosted.Listening.Port, hosted.Request.Name, tls);
    }

    /// <summary>Whether an in-process attach of this export must speak TLS (and whether the server wants a client certificate).</summary>
    public (bool NeedsTls, bool NeedsClientCertificate) LocalTlsOf(string name)
    {
        lock (_gate)
        {
            if (!_exports.TryGetValue(name, out var hosted) || hosted.Listening.Tls is not { } tls)
                return (false, false);
            return (tls.Mode == TlsMode.Require || hosted.Request.TlsOnly, tls.ClientCertificateAuthorities is not null);
        }
    }

    private NbdExport Describe(Hosted hosted)
    {
        var snapshot = hosted.Listening.Server.GetExport(hosted.Request.Name);
        if (snapshot is null)
            return hosted.LastSnapshot ?? throw new InvalidOperationException("export vanished");
        var r = hosted.Request;
        var export = new NbdExport
        {
            Name = r.Name,
            Description = r.Description,
            Path = r.Path,
            Backend = hosted.Backend,
            Size = snapshot.Size,
            IsReadOnly = snapshot.IsReadOnly,
            IsCopyOnWrite = r.CopyOnWrite,
            ListenAddress = hosted.Listening.SocketPath is null ? r.ListenAddress : null,
            Port = hosted.Listening.Port,
            SocketPath = hosted.Listening.SocketPath,
            AllowedClient = r.AllowedClient.ToArray(),
            MaxConnections = r.MaxConnections,
            State = "Running",
            ClientCount = snapshot.Connections.Count,
            StartTime = hosted.Started,
            BytesRead = snapshot.Io.BytesRead,
            BytesWritten = snapshot.Io.BytesWritten,
            Uri = UriOf(hosted).ToString(),
            TlsMode = hosted.Listening.Tls?.Mode.ToString() ?? "None",
            IsTlsOnly = r.TlsOnly,
            CertificateSubject = hosted.Listening.Tls?.ServerCertificate.Subject,
            CertificateThumbprint = hosted.Listening.Tls?.ServerCertificate.Thumbprint,
            RequiresClientCertificate = hosted.Listening.Tls?.ClientCertificateAuthorities is not null,
        };
        hosted.LastSnapshot = export;
        return export;
    }

    private static NbdExport Copy(NbdExport e, string state, int clients) => new()
    {
        Name = e.Name, Description = e.Description, Path = e.Path, Backend = e.Backend, Size = e.Size,
        IsReadOnly = e.IsReadOnly, IsCopyOnWrite = e.IsCopyOnWrite, ListenAddress = e.ListenAddress, Port = e.Port,
        SocketPath = e.SocketPath, AllowedClient = e.AllowedClient, MaxConnections = e.MaxConnections, State = state,
        ClientCount = clients, StartTime = e.StartTime, BytesRead = e.BytesRead, BytesWritten = e.BytesWritten, Uri = e.Uri,
        TlsMode = e.TlsMode, IsTlsOnly = e.IsTlsOnly, CertificateSubject = e.CertificateSubject, CertificateThumbprint = e.CertificateThumbprint,
        RequiresClientCertificate = e.RequiresClientCertificate,
    };
}
