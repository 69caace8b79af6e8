using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// An NBD server: named exports served on any number of TCP and Unix listeners and on sockets
/// handed in directly. Exports can be added and removed while it runs; statistics can be read at
/// any time.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, ServedExport> _exports = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<long, ClientConnection> _connections = new();
    private readonly List<Listener> _listeners = new();
    private readonly ILogger _log;
    private int _stopping;

    public NbdServer(NbdServerOptions? options = null, ILogger? logger = null)
    {
        Options = options ?? new NbdServerOptions();
        _log = logger ?? NullLogger.Instance;
    }

    public NbdServerOptions Options { get; }

    public bool IsStopping => Volatile.Read(ref _stopping) != 0;

    /// <summary>Endpoints being listened on (TCP endpoints carry the real port when 0 was asked for).</summary>
    public IReadOnlyList<EndPoint> EndPoints
    {
        get { lock (_listeners) return _listeners.Select(l => l.EndPoint).ToArray(); }
    }

    public int ConnectionCount => _connections.Count;

    public void AddExport(ExportDefinition export)
    {
        ThrowIfStopping();
        if (export.TlsOnly && (export.Listeners is { } only ? only.Any(l => l.Tls == null) : Options.Tls == null))
            throw new ArgumentException($"Export '{export.Name}' is TLS-only but {(export.Listeners is null ? "the server has" : "one of its listeners has")} no TLS certificate.", nameof(export));
        if (!_exports.TryAdd(export.Name, new ServedExport(export)))
            throw new NbdServerException(NbdServerError.ExportAlreadyExists,
                $"An export named '{export.Name}' is already served here; choose another name or stop it first.");
        _log.LogInformation("Serving export '{Name}' ({Store}, {Size} bytes)", export.Name, export.Store.Description, export.Store.Size);
    }

    /// <summary>
    /// Stops serving an export. With clients attached this refuses unless <paramref name="force"/>, which
    /// drains their in-flight requests and closes them. The store is disposed afterwards.
    /// </summary>
    public async Task RemoveExportAsync(string name, bool force, CancellationToken cancellationToken = default)
    {
        if (!_exports.TryGetValue(name, out var export))
            throw new NbdServerException(NbdServerError.ExportNotFound, $"No export named '{name}' is served here.");
        if (!export.TryMarkRemoved(force, out var attached))
            throw new NbdServerException(NbdServerError.ExportBusy,
                $"Export '{name}' has {attached.Length} connected client(s); disconnect them or use -Force.");
        _exports.TryRemove(name, out _);
        // The drain and the disposal run to the end even if the caller stops waiting (Ctrl+C):
        // abandoning them would leave the store's file open and its clients half-stopped.
        var drained = DrainAndDisposeAsync(export.Store, attached);
        await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
        _log.LogInformation("Stopped serving export '{Name}'", name);
    }

    /// <summary>Stops connections gracefully, waits (bounded) until they have closed, then flushes and disposes the store.</summary>
    private async Task DrainAndDisposeAsync(Storage.IBlockStore store, IReadOnlyCollection<ClientConnection> connections)
    {
        await Task.WhenAll(connections.Select(c => c.StopAsync(Options.StopGracePeriod))).ConfigureAwait(false);
        // A connection finishes its in-flight requests before Closed completes; disposing the store
        // earlier would fail them with EIO.
        await Task.WhenAny(Task.WhenAll(connections.Select(c => c.Closed)), Task.Delay(TimeSpan.FromSeconds(30))).ConfigureAwait(false);
        FlushAndDispose(store);
    }

    /// <summary>A graceful stop leaves every write durable, as if the last client had sent FLUSH.</summary>
    private void FlushAndDispose(Storage.IBlockStore store)
    {
        try
        {
            store.Flush();
        }
        catch (Exception e) when (e is Storage.StorageException or IOException or ObjectDisposedException)
        {
            _log.LogWarning("Flushing {Store} while stopping failed: {Message}", store.Description, e.Message);
        }
        store.Dispose();
    }

    public IReadOnlyList<ExportSnapshot> GetExports() =>
        _exports.Values.Select(e => e.Snapshot()).OrderBy(e => e.Name, StringComparer.Ordinal).ToArray();

    public ExportSnapshot? GetExport(string name) => _exports.TryGetValue(name, out var e) ? e.Snapshot() : null;

    /// <summary>Listens on TCP with the server's TLS settings; returns the bound endpoint (with the chosen port when 0 was given).</summary>
    public IPEndPoint ListenTcp(IPEndPoint endPoint) => (IPEndPoint)AddTcpListener(endPoint, Options.Tls).EndPoint;

    /// <summary>Listens on a Unix socket created with <paramref name="mode"/> (default owner read/write only), with the server's TLS settings.</summary>
    public string ListenUnix(string path, UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite) =>
        ((UnixDomainSocketEndPoint)AddUnixListener(path, Options.Tls, mode).EndPoint).ToString();

    /// <summary>Listens on TCP with its own TLS settings (null: no STARTTLS on this listener).</summary>
    public Listener AddTcpListener(IPEndPoint endPoint, TlsOptions? tls)
    {
        ThrowIfStopping();
        return AddListener(Listener.Tcp(endPoint, this, _log, tls));
    }

    /// <summary>Listens on a Unix socket with its own TLS settings (null: no STARTTLS on this listener).</summary>
    public Listener AddUnixListener(string path, TlsOptions? tls, UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite)
    {
        ThrowIfStopping();
        return AddListener(Listener.Unix(path, mode, this, _log, tls));
    }

    private Listener AddListener(Listener listener)
    {
        lock (_listeners)
            _listeners.Add(listener);
        listener.Start();
        _log.LogInformation("Listening on {EndPoint}", listener.EndPoint);
        return listener;
    }

    /// <summary>Stops accepting on one listener (a Unix socket file is removed); its accepted connections carry on.</summary>
    public void RemoveListener(Listener listener)
    {
        bool removed;
        lock (_listeners)
            removed = _listeners.Remove(listener);
        if (!removed)
            return;
        listener.Close();
        _log.LogInformation("Stopped listening on {EndPoint}", listener.EndPoint);
    }

    /// <summary>
    /// Serves a socket that is already connected, under the server's TLS settings, seeing every export.
    /// Completes when that connection closes.
    /// </summary>
    public Task ServeConnectedSocket(Socket socket)
    {
        ThrowIfStopping();
        return Start(new SocketTransport(socket), ConnectionOrigin.Connected(Options.Tls), checkAdmission: false);
    }

    /// <summary>
    /// Serves one end of a socket pair the host made for its own kernel attach: no TLS (the bytes never leave
    /// this process), every export visible, TLS-only ones included. Completes when that connection closes.
    /// </summary>
    public Task ServeLocalSocket(Socket socket)
    {
        ThrowIfStopping();
        return Start(new SocketTransport(socket), ConnectionOrigin.Local, checkAdmission: false);
    }

    internal void Accept(Socket client, Listener listener)
    {
        var transport = new SocketTransport(client);
        if (IsStopping)
        {
            transport.Dispose();
            return;
        }
        Start(transport, ConnectionOrigin.Accepted(listener), checkAdmission: true);
    }

    private Task Start(NbdTransport transport, ConnectionOrigin origin, bool checkAdmission)
    {
        var remote = transport.RemoteEndPoint;
        if (checkAdmission)
        {
            string? refusal = null;
            if (Options.AllowedClients is { } allowed && !allowed.Allows(remote))
                refusal = "not in the server's allowed clients";
            else if (Options.MaxConnections > 0 && _connections.Count >= Options.MaxConnections)
                refusal = $"server is at its maximum of {Options.MaxConnections} connections";
            if (refusal != null)
            {
                // Refused before the handshake: a clean close is all a client can be told here.
                _log.LogWarning("Refused client {Client}: {Reason}", remote, refusal);
                transport.Dispose();
                return Task.CompletedTask;
            }
        }
        var connection = new ClientConnection(this, transport, origin, _log, Options.MaxRequestsInFlight);
        _connections[connection.Id] = connection;
        connection.Start();
        return connection.Closed;
    }

    internal void Forget(ClientConnection connection) => _connections.TryRemove(connection.Id, out _);

    /// <summary>Finds an export for a client, or says which option error to send.</summary>
    internal ServedExport? ResolveExport(string name, ClientConnection client, bool tls, out NbdOptionReplyType error, out string? message)
    {
        var origin = client.Origin;
        tls |= origin.IsTrusted;
        bool selectiveTls = !tls && origin.Tls?.Mode == TlsMode.Allow && _exports.Values.Any(e => e.Definition.TlsOnly && IsVisibleOn(e, origin));
        if (!_exports.TryGetValue(name, out var export) || !IsVisibleOn(export, origin))
        {
            // SELECTIVETLS: a plain client must not learn which names exist behind TLS.
            error = selectiveTls ? NbdOptionReplyType.ErrTlsRequired : NbdOptionReplyType.ErrUnknown;
            message = selectiveTls ? "TLS is required for this export" :
                name.Length == 0 ? "this server has no default export" : $"no export named '{name}'";
            return null;
        }
        if (export.Definition.TlsOnly && !tls)
        {
            error = NbdOptionReplyType.ErrTlsRequired;
            message = "TLS is required for this export";
            return null;
        }
        if (export.Definition.AllowedClients is { } allowed && !allowed.Allows(client.RemoteEndPoint))
        {
            error = NbdOptionReplyType.ErrPolicy;
            message = $"client {client.ClientAddress} may not use export '{name}'";
            _log.LogWarning("Refused client {Client} for export '{Export}': not in its allowed clients", client.ClientAddress, name);
            return null;
        }
        error = NbdOptionReplyType.Ack;
        message = null;
        return export;
    }

    /// <summary>Exports a client may see in LIST: those it would be allowed to use.</summary>
    internal IEnumerable<ServedExport> ExportsVisibleTo(ClientConnection client, bool tls) =>
        _exports.Values
            .Where(e => IsVisibleOn(e, client.Origin) && (e.Definition.AllowedClients?.Allows(client.RemoteEndPoint) ?? true)
                && (tls || client.Origin.IsTrusted || !e.Definition.TlsOnly))
            .OrderBy(e => e.Name, StringComparer.Ordinal);

    /// <summary>An export limited to some listeners does not exist for clients of the others.</summary>
    private static bool IsVisibleOn(ServedExport export, ConnectionOrigin origin) =>
        export.Definition.Listeners is not { } only || origin.Listener is not { } listener || only.Contains(listener);

    /// <summary>
    /// Graceful stop: listeners close, new options get ERR_SHUTDOWN and new requests ESHUTDOWN,
    /// in-flight requests finish (within the grace period), then every socket closes and stores are disposed.
    /// </summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopping, 1) != 0)
            return;
        Listener[] listeners;
        lock (_listeners)
        {
            listeners = _listeners.ToArray();
            _listeners.Clear();
        }
        foreach (var listener in listeners)
            listener.Close();
        var connections = _connections.Values.ToArray();
        await Task.WhenAll(connections.Select(c => c.StopAsync(Options.StopGracePeriod))).ConfigureAwait(false);
        // The sockets are shut down: what is left is requests stuck in a store, which the grace period bounds too.
        await Task.WhenAny(Task.WhenAll(connections.Select(c => c.Closed)), Task.Delay(Options.StopGracePeriod)).ConfigureAwait(false);
        foreach (var export in _exports.Values)
            FlushAndDispose(export.Store);
        _exports.Clear();
        _log.LogInformation("Server stopped");
    }

    public ValueTask DisposeAsync() => new(StopAsync());

    private void ThrowIfStopping()
    {
        if (IsStopping)
            throw new NbdServerException(NbdServerError.Stopped, "The server has been stopped.");
    }
}
