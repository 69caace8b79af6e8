using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// A listening TCP or Unix socket whose accepted clients are handed to the server. Each listener has its own
/// TLS settings (exports on it share them), and exports can be limited to some listeners.
/// </summary>
public sealed class Listener
{
    private static long s_nextId;
    private readonly Socket _socket;
    private readonly NbdServer _server;
    private readonly ILogger _log;
    private readonly string? _unixPath;
    private Task? _acceptLoop;

    private Listener(Socket socket, NbdServer server, ILogger log, string? unixPath, TlsOptions? tls)
    {
        Id = Interlocked.Increment(ref s_nextId);
        Tls = tls;
        _socket = socket;
        _server = server;
        _log = log;
        _unixPath = unixPath;
        EndPoint = socket.LocalEndPoint!;
    }

    public long Id { get; }

    /// <summary>The bound endpoint (with the chosen port when 0 was asked for).</summary>
    public EndPoint EndPoint { get; }

    /// <summary>TLS settings of connections accepted here; null offers no STARTTLS.</summary>
    public TlsOptions? Tls { get; }

    internal static Listener Tcp(IPEndPoint endPoint, NbdServer server, ILogger log, TlsOptions? tls)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (endPoint.AddressFamily == AddressFamily.InterNetworkV6)
                socket.DualMode = false;
            socket.Bind(endPoint);
            socket.Listen(128);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw e.SocketErrorCode switch
            {
                SocketError.AddressAlreadyInUse => new NbdServerException(NbdServerError.AddressInUse,
                    $"{endPoint} is already in use; choose another -Port or stop the process listening there.", e),
                SocketError.AccessDenied => new NbdServerException(NbdServerError.PermissionDenied,
                    $"Not allowed to listen on {endPoint}; ports below 1024 need root.", e),
                SocketError.AddressNotAvailable => new NbdServerException(NbdServerError.InvalidAddress,
                    $"{endPoint.Address} is not an address of this machine.", e),
                _ => new NbdServerException(NbdServerError.InvalidAddress, $"Cannot listen on {endPoint}: {e.Message}", e),
            };
        }
        return new Listener(socket, server, log, null, tls);
    }

    internal static Listener Unix(string path, UnixFileMode mode, NbdServer server, ILogger log, TlsOptions? tls)
    {
        path = Path.GetFullPath(path);
        RemoveStaleSocket(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(path, mode);
            socket.Listen(128);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw e.SocketErrorCode switch
            {
                SocketError.AddressAlreadyInUse => new NbdServerException(NbdServerError.AddressInUse, $"{path} already exists.", e),
                SocketError.AccessDenied => new NbdServerException(NbdServerError.PermissionDenied, $"Not allowed to create {path}.", e),
                _ => new NbdServerException(NbdServerError.InvalidAddress, $"Cannot listen on {path}: {e.Message}", e),
            };
        }
        return new Listener(socket, server, log, path, tls);
    }

    /// <summary>A socket file nobody listens on is left over from a crash; one that answers is in use.</summary>
    private static void RemoveStaleSocket(string path)
    {
        if (!File.Exists(path) && !Directory.Exists(path))
            return;
        if ((File.GetAttributes(path) & FileAttributes.Directory) != 0)
            throw new NbdServerException(NbdServerError.InvalidAddress, $"{path} is a directory.");
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            File.Delete(path);
            return;
        }
        catch (SocketException e)
        {
            throw new NbdServerException(NbdServerError.AddressInUse, $"{path} exists and is not a stale socket: {e.Message}", e);
        }
        throw new NbdServerException(NbdServerError.AddressInUse, $"Another server is listening on {path}.");
    }

    internal void Start() => _acceptLoop = Task.Run(AcceptLoop);

    private async Task AcceptLoop()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await _socket.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is ObjectDisposedException or SocketException { SocketErrorCode: SocketError.OperationAborted or SocketError.Interrupted })
            {
                return;
            }
            catch (SocketException e)
            {
                // EMFILE and friends: back off rather than spin.
                _log.LogWarning("Accept on {EndPoint} failed: {Message}", EndPoint, e.Message);
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            try
            {
                _server.Accept(client, this);
            }
            catch (Exception e)
            {
                _log.LogError(e, "Failed to start serving a client");
                client.Dispose();
            }
        }
    }

    /// <summary>Stops accepting; connections already accepted carry on.</summary>
    internal void Close()
    {
        _socket.Dispose();
        try { _acceptLoop?.Wait(TimeSpan.FromSeconds(5)); }
        catch (AggregateException) { }
        if (_unixPath != null)
        {
            try { File.Delete(_unixPath); }
            catch (IOException) { }
        }
    }
}
