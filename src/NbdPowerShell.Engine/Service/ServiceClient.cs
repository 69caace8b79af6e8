using System.Net.Sockets;
using System.Text.Json;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service.Messages;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// <see cref="INbdHost"/> over the control socket: one connection per request, errors come back as
/// <see cref="NbdHostException"/> with the service's catalogue id. Certificate objects cannot cross the socket, so
/// requests carrying them are refused here with a clear message.
/// </summary>
public sealed class ServiceClient : INbdHost
{
    private static long s_nextId;

    public ServiceClient(ServicePaths paths)
    {
        Paths = paths;
    }

    public ServicePaths Paths { get; }

    public HostScope Scope => HostScope.Service;

    /// <summary>How long a request that changes something may take (an attach negotiates and waits for the kernel).</summary>
    public TimeSpan ChangeTimeout { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>How long a query may take.</summary>
    public TimeSpan QueryTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>True when the control socket file exists (the service may still be starting or gone after a crash).</summary>
    public bool SocketExists => File.Exists(Paths.ControlSocket);

    public Task<HelloReply> HelloAsync(CancellationToken cancellationToken) =>
        RequestAsync<NoBody, HelloReply>(ServiceMessages.Hello, NoBody.Value, TimeSpan.FromSeconds(10), cancellationToken);

    public Task<ServiceStatus> GetStatusAsync(CancellationToken cancellationToken) =>
        RequestAsync<NoBody, ServiceStatus>(ServiceMessages.Status, NoBody.Value, QueryTimeout, cancellationToken);

    /// <summary>Asks the service to stop gracefully (as SIGTERM does); returns once the request is accepted.</summary>
    public Task StopServiceAsync(CancellationToken cancellationToken) =>
        RequestAsync<NoBody, NoBody>(ServiceMessages.Stop, NoBody.Value, QueryTimeout, cancellationToken);

    public Task<HostResult<ExportInfo>> StartExportAsync(ExportSpec spec, bool replace, bool persistent, CancellationToken cancellationToken)
    {
        spec.Validate(persistent: true);
        return RequestAsync<StartExportRequest, HostResult<ExportInfo>>(ExportMessages.Start, new StartExportRequest(spec, replace, persistent), ChangeTimeout, cancellationToken);
    }

    public Task<IReadOnlyList<ExportInfo>> GetExportsAsync(CancellationToken cancellationToken) =>
        RequestAsync<NoBody, IReadOnlyList<ExportInfo>>(ExportMessages.List, NoBody.Value, QueryTimeout, cancellationToken);

    public Task<ExportInfo> StopExportAsync(string name, bool force, CancellationToken cancellationToken) =>
        RequestAsync<StopExportRequest, ExportInfo>(ExportMessages.Stop, new StopExportRequest(name, force), ChangeTimeout, cancellationToken);

    public Task<HostResult<DeviceStatus>> AttachDeviceAsync(DeviceRequest request, CancellationToken cancellationToken)
    {
        if (request.Tls is { HasObjects: true })
            throw new ArgumentException(
                "The NbdPowerShell service attaches this device, and a certificate object cannot be handed to another process: give the client certificate as files (-ClientCertificatePath and -ClientKeyPath).");
        return RequestAsync<DeviceRequest, HostResult<DeviceStatus>>(DeviceMessages.Attach, request, ChangeTimeout, cancellationToken);
    }

    public Task<IReadOnlyList<DeviceStatus>> GetDevicesAsync(CancellationToken cancellationToken) =>
        RequestAsync<NoBody, IReadOnlyList<DeviceStatus>>(DeviceMessages.List, NoBody.Value, QueryTimeout, cancellationToken);

    public Task<DeviceStatus> DetachDeviceAsync(string device, bool force, TimeSpan timeout, CancellationToken cancellationToken) =>
        RequestAsync<DetachDeviceRequest, DeviceStatus>(DeviceMessages.Detach, new DetachDeviceRequest(device, force, (int)Math.Ceiling(timeout.TotalSeconds)),
            ChangeTimeout + timeout, cancellationToken);

    private async Task<TReply> RequestAsync<TRequest, TReply>(string type, TRequest body, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var socket = await ConnectAsync(cancellationToken).ConfigureAwait(false);
        long id = Interlocked.Increment(ref s_nextId);
        var request = new ControlRequest { Id = id, Type = type, Body = JsonSerializer.SerializeToElement(body, ControlProtocol.Json) };
        byte[]? payload;
        try
        {
            try
            {
                await ControlProtocol.WriteFrameAsync(socket, JsonSerializer.SerializeToUtf8Bytes(request, ControlProtocol.Json), TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
            }
            catch (SocketException)
            {
                // The service may have answered (a refusal) and closed before reading: the answer is still there to read.
            }
            payload = await ControlProtocol.ReadFrameAsync(socket, timeout, TimeSpan.FromSeconds(30), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or IOException or ControlProtocolException)
        {
            throw Unavailable($"the NbdPowerShell service broke off the conversation ({e.Message}); see its log ({Paths.LogFile} or journalctl -u nbdpowershell)", e);
        }
        catch (TimeoutException e)
        {
            throw new NbdHostException(ErrorIds.Timeout, $"The NbdPowerShell service did not answer '{type}' within {timeout.TotalSeconds:0} s.", e);
        }
        if (payload is null)
            throw Unavailable("the NbdPowerShell service closed the connection without an answer (it may be stopping)", null);
        ControlReply reply;
        try
        {
            reply = JsonSerializer.Deserialize<ControlReply>(payload, ControlProtocol.Json) ?? throw new JsonException("null reply");
        }
        catch (JsonException e)
        {
            throw Unavailable($"the NbdPowerShell service sent an unreadable answer ({e.Message})", e);
        }
        if (!reply.Ok)
        {
            var error = reply.Error ?? new ControlError(ErrorIds.UnexpectedError, "the service reported a failure without saying which");
            throw new NbdHostException(ErrorIds.All.Contains(error.Id) ? error.Id : ErrorIds.UnexpectedError, error.Message);
        }
        if (reply.Body is not { } element)
            throw Unavailable($"the NbdPowerShell service answered '{type}' without a body", null);
        try
        {
            return element.Deserialize<TReply>(ControlProtocol.Json) ?? throw new JsonException("empty body");
        }
        catch (JsonException e)
        {
            throw Unavailable($"the answer to '{type}' does not fit this module ({e.Message}); the service may be another version", e);
        }
    }

    private async Task<Socket> ConnectAsync(CancellationToken cancellationToken)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(Paths.ControlSocket), cancellationToken).ConfigureAwait(false);
            return socket;
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw e.SocketErrorCode switch
            {
                _ when !File.Exists(Paths.ControlSocket) => (Exception)NotRunning(e),
                SocketError.AccessDenied => new NbdHostException(ErrorIds.PermissionDenied,
                    $"Only root may talk to the NbdPowerShell service ({Paths.ControlSocket} is root's): run PowerShell as root (sudo pwsh).", e),
                SocketError.AddressNotAvailable or SocketError.ConnectionRefused => NotRunning(e),
                _ => Unavailable($"cannot connect to {Paths.ControlSocket}: {e.Message}", e),
            };
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private NbdServiceNotRunningException NotRunning(Exception inner) =>
        new($"The NbdPowerShell service is not running (no answer on {Paths.ControlSocket}); Start-NbdService starts it.", inner);

    private static NbdHostException Unavailable(string message, Exception? inner) =>
        new(ErrorIds.ServiceUnavailable, char.ToUpperInvariant(message[0]) + message[1..] + ".", inner);
}

/// <summary>Nobody answers on the control socket: the service is not running (or died and left its socket file).</summary>
public sealed class NbdServiceNotRunningException(string message, Exception? inner = null) : Exception(message, inner);
