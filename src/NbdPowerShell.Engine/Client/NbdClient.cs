using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// Entry points of the NBD client: connect and negotiate (GO, falling back to EXPORT_NAME), list exports,
/// query one export. Every call is bounded by <see cref="NbdClientOptions.Timeout"/> and honours cancellation.
/// </summary>
public static class NbdClient
{
    /// <summary>
    /// Connects to the URI's server and enters transmission on its export: simple replies only, unless
    /// <see cref="NbdClientOptions.StructuredReplies"/> asks for more (never for connections given to the kernel).
    /// </summary>
    public static Task<NbdNegotiatedConnection> ConnectAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken ct = default) =>
        WithTimeoutAsync(uri, options, ct, async token =>
        {
            var socket = await OpenSocketAsync(uri, token).ConfigureAwait(false);
            try { return await NegotiateCoreAsync(socket, uri, options ?? NbdClientOptions.Default, token).ConfigureAwait(false); }
            catch { socket.Dispose(); throw; }
        });

    /// <summary>
    /// <see cref="ConnectAsync(NbdUri, NbdClientOptions?, CancellationToken)"/> for a connection whose socket is then
    /// read and written only with blocking calls on dedicated threads (<see cref="PipelinedConnection"/>): connect and
    /// negotiation make blocking calls too (on the caller's thread), so the runtime's socket engine never registers
    /// the socket (see <see cref="BlockingSocketStream"/> for why that matters). Timeout and cancellation shut the
    /// socket down, which ends a call that waits.
    /// </summary>
    internal static Task<NbdNegotiatedConnection> ConnectBlockingAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken ct = default) =>
        WithTimeoutAsync(uri, options, ct, async token =>
        {
            var socket = await OpenSocketAsync(uri, token, blocking: true).ConfigureAwait(false);
            try
            {
                using var shutdown = token.UnsafeRegister(static s =>
                {
                    try { ((Socket)s!).Shutdown(SocketShutdown.Both); }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
                }, socket);
                return await NegotiateCoreAsync(socket, uri, options ?? NbdClientOptions.Default, token, blocking: true).ConfigureAwait(false);
            }
            catch { socket.Dispose(); throw; }
        });

    public static Task<NbdNegotiatedConnection> ConnectAsync(string host, int port, string exportName, NbdClientOptions? options = null, CancellationToken ct = default) =>
        ConnectAsync(NbdUri.ForTcp(host, port, exportName), options, ct);

    /// <summary>
    /// Negotiates on an already connected stream socket (e.g. one end of a socketpair served in-process).
    /// <paramref name="uri"/> only names the peer in messages and records the export; the socket is not reconnected.
    /// On failure the socket is disposed.
    /// </summary>
    public static Task<NbdNegotiatedConnection> NegotiateAsync(Socket socket, NbdUri uri, NbdClientOptions? options = null, CancellationToken ct = default) =>
        WithTimeoutAsync(uri, options, ct, async token =>
        {
            try { return await NegotiateCoreAsync(socket, uri, options ?? NbdClientOptions.Default, token).ConfigureAwait(false); }
            catch { socket.Dispose(); throw; }
        });

    /// <summary>LIST, then INFO on each export for size, flags, block sizes and description (like nbdinfo --list).</summary>
    public static Task<IReadOnlyList<NbdExportInfo>> ListExportsAsync(NbdUri server, NbdClientOptions? options = null, CancellationToken ct = default) =>
        WithTimeoutAsync(server, options, ct, async token =>
        {
            var opts = options ?? NbdClientOptions.Default;
            using var socket = await OpenSocketAsync(server, token).ConfigureAwait(false);
            var (stream, negotiator, _) = await StartAsync(socket, server, opts, token).ConfigureAwait(false);
            await using var _stream = stream;
            var names = await negotiator.ListAsync(token).ConfigureAwait(false);
            var result = new List<NbdExportInfo>(names.Count);
            bool infoWorks = true;
            foreach (var (name, listed) in names)
            {
                NbdExportInfo? info = null;
                if (infoWorks)
                {
                    try
                    {
                        info = await negotiator.InfoOrGoAsync(NbdOption.Info, name, opts.RequestBlockSize, token).ConfigureAwait(false);
                        infoWorks = info is not null; // null = ERR_UNSUP: an old server, don't ask again
                    }
                    catch (NbdOptionErrorException) { } // listed but not queryable (e.g. TLS-only): keep the LIST data
                }
                result.Add(info is null
                    ? new NbdExportInfo { Name = name, Description = string.IsNullOrEmpty(listed) ? null : listed }
                    : info with { Description = info.Description ?? (string.IsNullOrEmpty(listed) ? null : listed) });
            }
            await negotiator.AbortAsync(token).ConfigureAwait(false);
            return (IReadOnlyList<NbdExportInfo>)result;
        });

    /// <summary>INFO on the URI's export without entering transmission (falls back to a full connect on old servers).</summary>
    public static Task<NbdExportInfo> GetExportInfoAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken ct = default) =>
        WithTimeoutAsync(uri, options, ct, async token =>
        {
            var opts = options ?? NbdClientOptions.Default;
            NbdExportInfo? info = null;
            using (var socket = await OpenSocketAsync(uri, token).ConfigureAwait(false))
            {
                var (stream, negotiator, _) = await StartAsync(socket, uri, opts, token).ConfigureAwait(false);
                await using var _stream = stream;
                if (negotiator.FixedNewstyle && !opts.ForceExportName)
                {
                    info = await negotiator.InfoOrGoAsync(NbdOption.Info, uri.ExportName, opts.RequestBlockSize, token).ConfigureAwait(false);
                    await negotiator.AbortAsync(token).ConfigureAwait(false);
                }
            }
            if (info is not null) return info;
            await using var connection = await ConnectAsync(uri, opts, token).ConfigureAwait(false);
            return connection.Export;
        });

    private static async Task<NbdNegotiatedConnection> NegotiateCoreAsync(Socket socket, NbdUri uri, NbdClientOptions options, CancellationToken ct, bool blocking = false)
    {
        var (stream, negotiator, effective) = await StartAsync(socket, uri, options, ct, blocking).ConfigureAwait(false);
        try
        {
            NbdExportInfo? info = null;
            bool tls = stream is SslStream;
            bool structured = options.StructuredReplies && await negotiator.StructuredReplyAsync(ct).ConfigureAwait(false);
            IReadOnlyDictionary<string, uint> contexts = structured && options.MetaContexts.Count > 0
                ? await negotiator.SetMetaContextAsync(uri.ExportName, options.MetaContexts, ct).ConfigureAwait(false)
                : new Dictionary<string, uint>();
            // Over TLS never fall back to EXPORT_NAME: GO is the downgrade defence the spec asks of TLS clients.
            if (negotiator.FixedNewstyle && (!options.ForceExportName || tls))
                info = await negotiator.InfoOrGoAsync(NbdOption.Go, uri.ExportName, options.RequestBlockSize, ct).ConfigureAwait(false);
            if (info is null && tls)
                throw new NbdProtocolException($"{Describe(uri)} does not support NBD_OPT_GO, which a TLS connection needs.");
            bool fallback = info is null;
            info ??= await negotiator.ExportNameAsync(uri.ExportName, ct).ConfigureAwait(false);
            if (!info.Flags!.Value.HasFlag(TransmissionFlags.HasFlags))
                info = info with { Flags = TransmissionFlags.None }; // flags without HAS_FLAGS carry no meaning
            return new NbdNegotiatedConnection(socket, stream, effective, info, fallback, structured, contexts);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Greeting, then STARTTLS and the TLS handshake when the URI (nbds://) or the options ask for TLS.
    /// Returns the stream to continue on and the URI as used (nbds:// when TLS is on).
    /// </summary>
    private static async Task<(Stream Stream, NbdNegotiator Negotiator, NbdUri Uri)> StartAsync(Socket socket, NbdUri uri, NbdClientOptions options, CancellationToken ct, bool blocking = false)
    {
        Stream stream = blocking ? new BlockingSocketStream(socket) : new NetworkStream(socket, ownsSocket: false);
        try
        {
            var negotiator = await NbdNegotiator.StartAsync(stream, Describe(uri), ct).ConfigureAwait(false);
            if (!uri.Tls && options.Tls is null)
                return (stream, negotiator, uri);
            stream = await ClientTlsHandshake.UpgradeAsync(negotiator, stream, uri, options.Tls ?? NbdClientTlsOptions.Default, ct).ConfigureAwait(false);
            return (stream, negotiator, uri.WithTls(true));
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Opens a TCP (every resolved address in turn) or Unix stream socket; maps failures to typed exceptions. With
    /// <paramref name="blocking"/> the connect makes no asynchronous socket call (see <see cref="ConnectBlocking"/>).
    /// </summary>
    internal static async Task<Socket> OpenSocketAsync(NbdUri uri, CancellationToken ct, bool blocking = false)
    {
        if (uri.IsUnix)
        {
            var unix = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                var endPoint = new UnixDomainSocketEndPoint(uri.SocketPath!);
                if (blocking) unix.Connect(endPoint); // a Unix connect completes at once (the listener's backlog takes it)
                else await unix.ConnectAsync(endPoint, ct).ConfigureAwait(false);
                return unix;
            }
            catch (SocketException e)
            {
                unix.Dispose();
                if (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable || !File.Exists(uri.SocketPath))
                    throw new NbdConnectionRefusedException($"No NBD server listens on Unix socket '{uri.SocketPath}': {e.Message}", e);
                throw new NbdConnectionException($"Cannot connect to Unix socket '{uri.SocketPath}': {e.Message}", e);
            }
            catch { unix.Dispose(); throw; }
        }

        IPAddress[] addresses;
        if (IPAddress.TryParse(uri.Host, out var literal)) addresses = [literal];
        else
        {
            try { addresses = await Dns.GetHostAddressesAsync(uri.Host, ct).ConfigureAwait(false); }
            catch (SocketException e) { throw new NbdConnectionException($"Cannot resolve host '{uri.Host}': {e.Message}", e); }
            if (addresses.Length == 0) throw new NbdConnectionException($"Host '{uri.Host}' has no addresses.");
        }
        SocketException? last = null;
        foreach (var address in addresses)
        {
            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                var endPoint = new IPEndPoint(address, uri.Port);
                if (blocking) ConnectBlocking(socket, endPoint, ct);
                else await socket.ConnectAsync(endPoint, ct).ConfigureAwait(false);
                // The write payloads this side sends (and the kernel's, once the socket is handed to the nbd driver).
                LocalPeer.AvoidPacing(socket);
                return socket;
            }
            catch (SocketException e) { socket.Dispose(); last = e; }
            catch { socket.Dispose(); throw; }
        }
        string where = $"{FormatHost(uri.Host)}:{uri.Port}";
        if (last!.SocketErrorCode == SocketError.ConnectionRefused)
            throw new NbdConnectionRefusedException($"Connection refused by {where}: no NBD server is listening there.", last);
        throw new NbdConnectionException($"Cannot connect to {where}: {last.Message}", last);
    }

    /// <summary>
    /// A TCP connect that honours <paramref name="ct"/> without the runtime's socket engine: started non-blocking,
    /// then poll(2) for writability in short slices, so the timeout and cancellation are seen within 100 ms; the
    /// socket is blocking again afterwards.
    /// </summary>
    private static void ConnectBlocking(Socket socket, EndPoint endPoint, CancellationToken ct)
    {
        socket.Blocking = false;
        try { socket.Connect(endPoint); }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
        {
            while (!socket.Poll(100_000, SelectMode.SelectWrite) && !socket.Poll(0, SelectMode.SelectError))
                ct.ThrowIfCancellationRequested();
            var error = (SocketError)(int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != SocketError.Success)
                throw new SocketException((int)error);
        }
        socket.Blocking = true;
    }

    private static async Task<T> WithTimeoutAsync<T>(NbdUri uri, NbdClientOptions? options, CancellationToken ct, Func<CancellationToken, Task<T>> body)
    {
        var timeout = (options ?? NbdClientOptions.Default).Timeout;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout > TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan) cts.CancelAfter(timeout);
        try { return await body(cts.Token).ConfigureAwait(false); }
        catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new NbdTimeoutException($"Connecting to {Describe(uri)} and negotiating did not finish within {timeout.TotalSeconds:0.#} s.", timeout, e);
        }
    }

    private static string FormatHost(string host) => host.Contains(':') ? $"[{host}]" : host;

    internal static string Describe(NbdUri uri) => uri.IsUnix ? $"NBD server at Unix socket '{uri.SocketPath}'" : $"NBD server {FormatHost(uri.Host)}:{uri.Port}";
}
