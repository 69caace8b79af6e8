using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Service.Messages;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The control socket: a Unix stream socket (0600) whose peers are checked with SO_PEERCRED (root, or the user the
/// service runs as). Each connection is served on its own task with read deadlines, so a client that stalls only
/// stalls itself; a bad frame or message gets an error reply and never reaches the host.
/// </summary>
internal sealed class ControlServer : IAsyncDisposable
{
    public static readonly TimeSpan DefaultIdleTimeout = TimeSpan.FromSeconds(60);

    /// <summary>A connection may wait this long between requests (and a first request) before it is closed.</summary>
    public TimeSpan IdleTimeout { get; init; } = DefaultIdleTimeout;

    /// <summary>Once a frame started, the rest of it must arrive within this time.</summary>
    public TimeSpan FrameTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public const int MaxConnections = 64;

    private readonly string _path;
    private readonly ControlDispatcher _dispatcher;
    private readonly ServiceHost _service;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly SemaphoreSlim _slots = new(MaxConnections, MaxConnections);
    private readonly HashSet<Task> _connections = [];
    private Socket? _listener;
    private Task? _acceptLoop;

    public ControlServer(string path, ServiceHost service, ILogger log)
    {
        _path = path;
        _service = service;
        _log = log;
        _dispatcher = new ControlDispatcher();
        ServiceMessages.Register(_dispatcher, service);
        ExportMessages.Register(_dispatcher, service);
        DeviceMessages.Register(_dispatcher, service);
    }

    /// <summary>Binds the socket (replacing a stale one: the caller holds the service lock) with mode 0600 and starts accepting.</summary>
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void Start()
    {
        if (File.Exists(_path))
            File.Delete(_path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            // Bind under a restrictive umask-independent mode: chmod right after bind, before listen accepts anyone.
            socket.Bind(new UnixDomainSocketEndPoint(_path));
            File.SetUnixFileMode(_path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        _listener = socket;
        _acceptLoop = Task.Run(AcceptLoop);
        _log.LogInformation("Control socket {Path} is listening", _path);
    }

    private async Task AcceptLoop()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener!.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException { SocketErrorCode: SocketError.OperationAborted or SocketError.Interrupted })
            {
                return;
            }
            catch (SocketException e)
            {
                _log.LogWarning("Accept on the control socket failed: {Message}", e.Message);
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            if (!_slots.Wait(0))
            {
                // Too many at once: answer and close rather than queue without bound.
                _ = RefuseAsync(client, ErrorIds.ServiceUnavailable, $"the service already serves {MaxConnections} control connections; retry in a moment");
                continue;
            }
            var task = Task.Run(() => ServeAsync(client));
            lock (_connections)
                _connections.Add(task);
            _ = task.ContinueWith(t =>
            {
                lock (_connections)
                    _connections.Remove(t);
                _slots.Release();
            }, TaskScheduler.Default);
        }
    }

    /// <summary>Root, or the user the service itself runs as (a private service of a non-root user).</summary>
    private static bool IsAllowed(Libc.UCred peer) => peer.Uid == 0 || peer.Uid == Libc.GetEuid();

    private async Task ServeAsync(Socket client)
    {
        using var _ = client;
        try
        {
            var peer = Libc.PeerCredentials(client);
            if (!IsAllowed(peer))
            {
                _log.LogWarning("Refused a control connection from uid {Uid} (pid {Pid}): only root may control the service", peer.Uid, peer.Pid);
                await RefuseAsync(client, ErrorIds.PermissionDenied,
                    $"only root controls the NbdPowerShell service (you are uid {peer.Uid}); run PowerShell as root (sudo pwsh)").ConfigureAwait(false);
                return;
            }
            while (!_stopping.IsCancellationRequested)
            {
                byte[]? payload;
                try
                {
                    payload = await ControlProtocol.ReadFrameAsync(client, IdleTimeout, FrameTimeout, _stopping.Token).ConfigureAwait(false);
                }
                catch (ControlProtocolException e)
                {
                    _log.LogWarning("Closing a control connection (pid {Pid}): {Message}", peer.Pid, e.Message);
                    await TrySendAsync(client, new ControlReply { Error = new ControlError(ErrorIds.ServiceUnavailable, "The service could not read the request: " + e.Message) }).ConfigureAwait(false);
                    return;
                }
                if (payload is null)
                    return;
                var reply = await HandleAsync(client, payload).ConfigureAwait(false);
                // Not cancelled by the stop: a reply that is ready is delivered (bounded by FrameTimeout; DisposeAsync
                // waits for it). Above all the answer to service.stop itself, whose stop begins before it is written.
                await ControlProtocol.WriteFrameAsync(client, JsonSerializer.SerializeToUtf8Bytes(reply, ControlProtocol.Json), FrameTimeout, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or IOException or TimeoutException or ObjectDisposedException or OperationCanceledException)
        {
            _log.LogDebug("Control connection ended: {Message}", e.Message);
        }
        catch (Exception e)
        {
            // Nothing a client sends may take the service down.
            _log.LogError(e, "Unexpected failure on a control connection");
        }
    }

    private async Task<ControlReply> HandleAsync(Socket client, byte[] payload)
    {
        ControlRequest request;
        try
        {
            request = JsonSerializer.Deserialize<ControlRequest>(payload, ControlProtocol.Json) ?? throw new JsonException("null request");
        }
        catch (JsonException e)
        {
            return Fail(0, ErrorIds.ServiceUnavailable, $"The service could not read the request: it is not a JSON request object ({e.Message}).");
        }
        if (!_dispatcher.TryGet(request.Type, out bool changes, out var handle))
            return Fail(request.Id, ErrorIds.ServiceUnavailable,
                $"This service (version {ServiceHost.ModuleVersion}) does not know the request '{request.Type}'; use a module of the same version, or restart the service after an update.");
        if (changes && _service.IsStopping)
            return Fail(request.Id, ErrorIds.ServiceUnavailable, "The NbdPowerShell service is shutting down and takes no new work; start it again (Start-NbdService) and retry.");
        // A client that goes away (Ctrl+C) cancels its request.
        using var gone = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        var watch = WatchForHangUpAsync(client, gone);
        try
        {
            object? body = await handle(request.Body, gone.Token).ConfigureAwait(false);
            return new ControlReply { Id = request.Id, Ok = true, Body = JsonSerializer.SerializeToElement(body, ControlProtocol.Json) };
        }
        catch (ControlProtocolException e)
        {
            return Fail(request.Id, ErrorIds.ServiceUnavailable, "The service could not read the request: " + e.Message);
        }
        catch (Exception e) when (ErrorIds.Classify(e) is { } id)
        {
            return Fail(request.Id, id, e.Message);
        }
        catch (OperationCanceledException)
        {
            return Fail(request.Id, ErrorIds.ServiceUnavailable, "The request was cancelled (the client went away or the service is stopping).");
        }
        catch (Exception e)
        {
            _log.LogError(e, "Request {Type} failed unexpectedly", request.Type);
            return Fail(request.Id, ErrorIds.UnexpectedError, $"{request.Type} failed unexpectedly: {e.Message}");
        }
        finally
        {
            gone.Cancel();
            await watch.ConfigureAwait(false);
        }
    }

    /// <summary>While a request runs, the client sends nothing; a read returning 0 means it hung up.</summary>
    private static async Task WatchForHangUpAsync(Socket client, CancellationTokenSource gone)
    {
        var probe = new byte[1];
        try
        {
            int n = await client.ReceiveAsync(probe, SocketFlags.Peek, gone.Token).ConfigureAwait(false);
            if (n == 0)
                gone.Cancel();
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private static ControlReply Fail(long id, string errorId, string message) => new() { Id = id, Error = new ControlError(errorId, message) };

    /// <summary>
    /// Answers the client's first request with an error and closes. The request is read first (within a short
    /// deadline): closing a Unix socket with unread data resets it, and the client would never see the reason.
    /// </summary>
    private static async Task RefuseAsync(Socket client, string errorId, string message)
    {
        long id = 0;
        try
        {
            var payload = await ControlProtocol.ReadFrameAsync(client, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5), CancellationToken.None).ConfigureAwait(false);
            if (payload is not null && JsonSerializer.Deserialize<ControlRequest>(payload, ControlProtocol.Json) is { } request)
                id = request.Id;
        }
        catch (Exception e) when (e is ControlProtocolException or JsonException or SocketException or IOException or TimeoutException)
        {
        }
        await TrySendAsync(client, Fail(id, errorId, message)).ConfigureAwait(false);
        try
        {
            client.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
        }
        client.Dispose();
    }

    private static async Task TrySendAsync(Socket client, ControlReply reply)
    {
        try
        {
            await ControlProtocol.WriteFrameAsync(client, JsonSerializer.SerializeToUtf8Bytes(reply, ControlProtocol.Json), TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or IOException or TimeoutException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Stops accepting, cancels running requests and waits (bounded) for the connections to end; removes the socket file.</summary>
    public async ValueTask DisposeAsync()
    {
        _stopping.Cancel();
        _listener?.Dispose();
        if (_acceptLoop is not null)
            await _acceptLoop.ConfigureAwait(false);
        Task[] open;
        lock (_connections)
            open = _connections.ToArray();
        await Task.WhenAny(Task.WhenAll(open), Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
        try { File.Delete(_path); } catch (IOException) { }
    }
}
