using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// Keeps one netlink-attached nbd device whole while its servers come and go. The kernel does the holding: with a
/// request timeout and a dead-connection timeout it requeues the I/O of a dead socket and waits for RECONFIGURE to
/// bring a new one. This class notices the loss (LINK_DEAD multicast; polling its own duplicates of the device's
/// sockets and STATUS as backstop), reconnects with backoff, checks that the server is still the same export (name,
/// size, flags, read-only state, and for read-only devices the content fingerprint), and gives the kernel new sockets
/// for exactly the dead ones. Read-only devices fail over along <see cref="SupervisionRecord.Servers"/>; writable devices
/// only ever return to their one server.
/// <para>
/// It holds no static state and does not care who hosts it: create it with <see cref="AttachAsync"/> or
/// <see cref="AdoptAsync"/> (after a host restart, from the persisted <see cref="Record"/>), read <see cref="Snapshot"/>,
/// and stop it with <see cref="StopAsync"/> before disconnecting the device. Every loss, refusal, reconnect and failover
/// is logged through the given ILogger and kept in the snapshot's history.
/// </para>
/// </summary>
public sealed class DeviceSupervisor : IAsyncDisposable
{
    private static readonly TimeSpan RelayGrace = TimeSpan.FromSeconds(5);
    private readonly SupervisionRecord _record;
    private readonly IReadOnlyList<NbdUri> _candidates;
    private readonly ILogger _logger;
    private readonly DeviceSupervisorOptions _options;
    private readonly INbdKernelControl _kernel;
    private readonly string _device;
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Random _jitter = new();
    private readonly object _gate = new();
    private readonly Queue<SupervisionEvent> _history = new();

    // Owned by the supervision loop (or by the attach path before the loop starts); _sockets changes under _gate
    // because Snapshot reads it.
    private readonly List<(KernelSocketWatch Watch, TlsRelay? Relay)> _sockets = new();
    private readonly List<TlsRelay> _retiredRelays = new();
    /// <summary>Kernel sockets of the device we hold no watch on: adopted ones, and dead ones we let go of.</summary>
    private int _unwatched;
    /// <summary>Of the unwatched sockets, how many we saw die (the kernel has them marked dead).</summary>
    private int _knownDead;
    /// <summary>An unwatched socket may be dead (LINK_DEAD we could not place, lost notifications, adoption): probe with one.</summary>
    private bool _suspect;
    private int _linkSignalled;
    private IDisposable? _subscription;
    private Task _loop = Task.CompletedTask;
    private int _stopped;

    // Status, under _gate.
    private SupervisionState _state = SupervisionState.Connected;
    private string? _server;
    private int _reconnects;
    private int _failovers;
    private DateTimeOffset? _lastLoss;
    private string? _lastLossReason;
    private DateTimeOffset? _lastReconnect;
    private DateTimeOffset? _deadSince;

    private DeviceSupervisor(SupervisionRecord record, ILogger? logger, DeviceSupervisorOptions? options, INbdKernelControl kernel)
    {
        record.Validate();
        _record = record;
        var servers = record.ServerUris;
        // A writable device goes back only to the server it was attached to; Validate refuses a list for it.
        _candidates = record.ReadOnly ? servers : [servers[0]];
        _logger = logger ?? NullLogger.Instance;
        _options = options ?? DeviceSupervisorOptions.Default;
        _kernel = kernel;
        _device = $"/dev/nbd{record.Index}";
    }

    /// <summary>What is supervised; persist it to adopt the device after a host restart.</summary>
    public SupervisionRecord Record => _record;

    public int Index => _record.Index;

    /// <summary>The attach this supervisor made; null for an adopted device.</summary>
    public AttachResult? Attachment { get; private set; }

    /// <summary>
    /// Attaches the first server of <paramref name="request"/> that answers (netlink, with the request and dead-connection
    /// timeouts), takes the content fingerprint of read-only images, and starts supervising.
    /// </summary>
    /// <param name="listener">A LINK_DEAD listener shared with other supervisors; null opens one for this device.</param>
    public static async Task<DeviceSupervisor> AttachAsync(SupervisedAttachRequest request, ILogger? logger = null,
        DeviceSupervisorOptions? options = null, NbdLinkDeadListener? listener = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        request.Validate();
        KernelPreconditions.EnsureAdmin();
        KernelPreconditions.EnsureModuleLoaded();
        logger ??= NullLogger.Instance;
        options ??= DeviceSupervisorOptions.Default;
        // Listen before the device exists, so no LINK_DEAD between attach and supervision is missed.
        var kernel = new NetlinkKernelControl(listener, logger);
        try
        {
            var clientOptions = new NbdClientOptions { Timeout = options.ConnectLimit(request.RequestTimeoutSeconds), Tls = request.Tls?.Load() };
            var (uri, connections) = await ConnectFirstAsync(request, clientOptions, ct).ConfigureAwait(false);
            var first = connections[0];
            bool readOnly = request.ReadOnly || first.IsReadOnly;
            string? fingerprint = null;
            List<(Socket KernelEnd, KernelSocketWatch Watch, TlsRelay? Relay)> handed = new();
            try
            {
                if (request.Connections > 1 && !first.CanMultiConn)
                    throw new NbdMultiConnNotSupportedException($"The export does not advertise CAN_MULTI_CONN, so it cannot be attached with {request.Connections} connections; use one connection.");
                if (readOnly) fingerprint = await ContentFingerprint.ComputeAsync(first, ct).ConfigureAwait(false);
                foreach (var c in connections) handed.Add(HandOver(c, uri, options, logger));
            }
            catch
            {
                foreach (var h in handed) Release(h);
                foreach (var c in connections) c.Dispose();
                throw;
            }

            var attachOptions = new AttachOptions
            {
                Mode = AttachMode.Netlink,
                Index = request.Index,
                BlockSize = request.BlockSize,
                ReadOnly = readOnly,
                Timeout = TimeSpan.FromSeconds(request.RequestTimeoutSeconds),
                DeadConnectionTimeout = TimeSpan.FromSeconds(request.DeadConnectionTimeoutSeconds),
                BackendIdentifier = request.BackendIdentifier ?? first.Uri.ToString(),
            };
            AttachResult result;
            try
            {
                result = await new KernelAttacher(logger).AttachAsync(handed.Select(h => h.KernelEnd).ToList(), first.Size, first.Flags,
                    attachOptions, first.Export.MinimumBlockSize, first.Export.PreferredBlockSize, ct).ConfigureAwait(false);
            }
            catch
            {
                foreach (var h in handed) Release(h);
                throw;
            }

            var record = new SupervisionRecord
            {
                Index = result.Index,
                BackendIdentifier = attachOptions.BackendIdentifier,
                Servers = request.Servers.Select(s => NbdUri.Parse(s).ToString()).ToArray(),
                ExportName = first.ExportName,
                Size = first.Size,
                TransmissionFlags = first.Flags,
                ReadOnly = readOnly,
                Connections = connections.Count,
                RequestTimeoutSeconds = request.RequestTimeoutSeconds,
                DeadConnectionTimeoutSeconds = request.DeadConnectionTimeoutSeconds,
                ContentFingerprint = fingerprint,
                Tls = request.Tls,
            };
            var supervisor = new DeviceSupervisor(record, logger, options, kernel) { Attachment = result };
            foreach (var h in handed) supervisor._sockets.Add((h.Watch, h.Relay));
            supervisor._server = uri.ToString();
            supervisor.AddEvent(SupervisionEventKind.Attached,
                $"{supervisor._device} attached to {uri} ({record.Size} bytes, {(readOnly ? "read-only" : "writable")}, {record.Connections} connection(s), " +
                $"request timeout {record.RequestTimeoutSeconds} s, dead-connection timeout {record.DeadConnectionTimeoutSeconds} s)", uri.ToString());
            supervisor.StartLoop();
            return supervisor;
        }
        catch
        {
            kernel.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Takes over a device attached earlier (by a host that has since restarted) from its persisted record. The kernel
    /// must show device <see cref="SupervisionRecord.Index"/> connected with <see cref="SupervisionRecord.BackendIdentifier"/>.
    /// The timeouts are set again, and since the sockets the kernel holds are not ours to watch, the first round probes:
    /// it offers one new socket, which the kernel only takes if a connection died while nobody watched.
    /// </summary>
    public static Task<DeviceSupervisor> AdoptAsync(SupervisionRecord record, ILogger? logger = null,
        DeviceSupervisorOptions? options = null, NbdLinkDeadListener? listener = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(record);
        record.Validate();
        ct.ThrowIfCancellationRequested();
        KernelPreconditions.EnsureAdmin();
        KernelPreconditions.EnsureModuleLoaded();
        var kernel = new NetlinkKernelControl(listener, logger ?? NullLogger.Instance);
        try { return Task.FromResult(Adopt(record, logger, options, kernel)); }
        catch
        {
            kernel.Dispose();
            throw;
        }
    }

    /// <summary>Adoption against any kernel control (the real one, or a simulated kernel in tests).</summary>
    internal static DeviceSupervisor Adopt(SupervisionRecord record, ILogger? logger, DeviceSupervisorOptions? options, INbdKernelControl kernel)
    {
        var supervisor = new DeviceSupervisor(record, logger, options, kernel);
        string device = supervisor._device;
        bool? connected = kernel.IsConnected(record.Index);
        if (connected is null)
            throw new NbdKernelException($"Cannot ask the kernel whether {device} is connected (netlink STATUS failed), so it cannot be adopted.");
        if (connected == false)
            throw new NbdDeviceNotFoundException(record.Index, $"{device} is not connected any more, so there is nothing to supervise; attach it again.");
        string? backend = kernel.BackendIdentifier(record.Index);
        if (backend != record.BackendIdentifier)
            throw new NbdDeviceBusyException(record.Index,
                $"{device} is connected to '{backend ?? "(no backend identifier)"}', not to '{record.BackendIdentifier}': it is another device now and is left alone.");
        try
        {
            kernel.Reconfigure(new NbdNetlinkFamily.ReconfigureRequest
            {
                Index = record.Index,
                BackendIdentifier = record.BackendIdentifier,
                TimeoutSeconds = (ulong)record.RequestTimeoutSeconds,
                DeadConnTimeoutSeconds = (ulong)record.DeadConnectionTimeoutSeconds,
            });
        }
        catch (NetlinkException e)
        {
            throw new NbdKernelException($"The kernel refused to reconfigure the timeouts of {device}: {e.Message}", e.Errno, e);
        }
        supervisor._unwatched = record.Connections;
        supervisor._suspect = true;
        supervisor.AddEvent(SupervisionEventKind.Adopted, $"{device} adopted from its record ({record.BackendIdentifier}); checking its connections");
        supervisor.StartLoop();
        return supervisor;
    }

    /// <summary>A consistent copy of the current status and history.</summary>
    public SupervisionSnapshot Snapshot()
    {
        lock (_gate)
        {
            return new SupervisionSnapshot
            {
                Index = _record.Index,
                BackendIdentifier = _record.BackendIdentifier,
                State = _state,
                Server = _server,
                ReconnectCount = _reconnects,
                FailoverCount = _failovers,
                LastLossTime = _lastLoss,
                LastLossReason = _lastLossReason,
                LastReconnectTime = _lastReconnect,
                DeadSince = _deadSince,
                TlsRelays = _sockets.Count(s => s.Relay is { IsRunning: true }),
                History = _history.ToArray(),
            };
        }
    }

    /// <summary>
    /// Stops watching and reconnecting (call it before disconnecting the device). The device stays as it is, and TLS
    /// relays keep relaying until the kernel closes its ends (at disconnect) or <see cref="DisposeAsync"/>.
    /// </summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        _stop.Cancel();
        try { await _loop.ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        _subscription?.Dispose();
        foreach (var (watch, _) in _sockets) watch.Dispose();
        bool ended;
        lock (_gate) ended = _state == SupervisionState.Disconnected;
        if (!ended)
        {
            SetState(SupervisionState.Stopped);
            AddEvent(SupervisionEventKind.Stopped, $"Supervision of {_device} stopped");
            _logger.LogInformation("Supervision of {Device} stopped", _device);
        }
    }

    /// <summary>
    /// Stops supervision and ends the TLS relays: after a disconnect they end by themselves within a few seconds;
    /// while the device is still attached this cuts its TLS connections (a later adoption reconnects them).
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        var relays = _sockets.Select(s => s.Relay).OfType<TlsRelay>().Concat(_retiredRelays).ToArray();
        await Task.WhenAll(relays.Select(r => r.StopAsync(RelayGrace))).ConfigureAwait(false);
        _kernel.Dispose();
        _stop.Dispose();
        _wake.Dispose();
    }

    private void StartLoop()
    {
        _subscription = _kernel.WatchLinkDead(_record.Index, OnLinkSignal);
        _loop = Task.Run(() => RunAsync(_stop.Token));
    }

    private void OnLinkSignal(NbdLinkSignal signal)
    {
        Interlocked.Exchange(ref _linkSignalled, 1);
        try
        {
            if (_wake.CurrentCount == 0) _wake.Release();
        }
        catch (ObjectDisposedException) { }
    }

    private async Task RunAsync(CancellationToken ct)
    {
        try
        {
            while (true)
            {
                string? loss = DetectLoss();
                if (_knownDead > 0 || _suspect)
                {
                    if (!await HealAsync(loss, ct).ConfigureAwait(false)) return;
                }
                else if (!DeviceStillOurs())
                {
                    EndDisconnected();
                    return;
                }
                try { await _wake.WaitAsync(_options.CheckInterval, ct).ConfigureAwait(false); }
                catch (ObjectDisposedException) { return; }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A bug, not a server problem: say so loudly, the device itself is left to the kernel.
            _logger.LogError(e, "Supervision of {Device} failed and ended", _device);
            AddEvent(SupervisionEventKind.Error, $"Supervision of {_device} failed and ended: {e.Message}");
            SetState(SupervisionState.Stopped);
        }
    }

    /// <summary>
    /// Polls our socket duplicates and takes in a LINK_DEAD signal; updates the dead/suspect counts and returns why the
    /// device lost a connection, or null when nothing new died.
    /// </summary>
    private string? DetectLoss()
    {
        string? reason = null;
        for (int i = _sockets.Count - 1; i >= 0; i--)
        {
            var (watch, relay) = _sockets[i];
            if (!watch.IsDead) continue;
            lock (_gate) _sockets.RemoveAt(i);
            watch.Dispose();
            if (relay is not null) _retiredRelays.Add(relay);
            _unwatched++;
            _knownDead++;
            reason ??= $"the connection to {watch.Server} died (the server closed or reset it, or a request timed out)";
        }
        _retiredRelays.RemoveAll(r => !r.IsRunning);
        if (Interlocked.Exchange(ref _linkSignalled, 0) != 0 && reason is null && _unwatched > _knownDead)
        {
            // The kernel says a connection died, and it is not one we watch: find it by offering a socket.
            _suspect = true;
            reason = "the kernel reported a dead connection (LINK_DEAD)";
        }
        return reason;
    }

    /// <summary>STATUS and the sysfs backend: is the device still configured, and still the one we attached?</summary>
    private bool DeviceStillOurs()
    {
        if (_kernel.IsConnected(_record.Index) == false) return false;
        string? backend = _kernel.BackendIdentifier(_record.Index);
        return backend is null || backend == _record.BackendIdentifier;
    }

    /// <summary>
    /// One loss (or, after adoption, one check) from the first attempt until the device is whole again.
    /// Returns false when supervision must end because the device was disconnected.
    /// </summary>
    private async Task<bool> HealAsync(string? reason, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        string? previousServer;
        lock (_gate) previousServer = _server;
        // A reason means the kernel or our watch saw a connection die; none means an adoption check, which is only a
        // loss once it turns out a socket was dead (or no server can be reached to find out).
        bool lossBegun = false;
        if (reason is not null)
        {
            BeginLoss(reason);
            lossBegun = true;
        }
        var refusalsSeen = new HashSet<string>(StringComparer.Ordinal);
        int attempt = 0, taken = 0;
        string? lastFailure = null;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            if (!DeviceStillOurs())
            {
                EndDisconnected();
                return false;
            }
            if (DetectLoss() is { } more && !lossBegun)
            {
                BeginLoss(more);
                lossBegun = true;
            }
            if (lossBegun && clock.Elapsed >= TimeSpan.FromSeconds(_record.DeadConnectionTimeoutSeconds) && CurrentState != SupervisionState.Dead)
                MarkDead(lastFailure);

            var outcome = await TryReplaceAsync(refusalsSeen, ct).ConfigureAwait(false);
            taken += outcome.SocketsTaken;
            switch (outcome.Kind)
            {
                case ReplaceKind.Whole when taken == 0:
                    // Every socket the kernel holds is alive: an adoption check passed, or a LINK_DEAD we could not
                    // place was about a socket already replaced.
                    if (lossBegun)
                    {
                        SetState(SupervisionState.Connected);
                        _logger.LogInformation("{Device}: no dead connection found; the device is whole", _device);
                    }
                    return true;
                case ReplaceKind.Whole:
                    if (!lossBegun) BeginLoss("a connection was found dead after adoption");
                    Healed(outcome.Server!, previousServer, clock.Elapsed);
                    return true;
                case ReplaceKind.Partial:
                    continue; // more sockets to place, at once
                case ReplaceKind.NotTakenYet:
                    lastFailure = outcome.Failure;
                    await Task.Delay(_options.InitialBackoff, ct).ConfigureAwait(false);
                    continue;
                default:
                    lastFailure = outcome.Failure;
                    if (!lossBegun)
                    {
                        // After adoption with no server to check against, assume the worst: the kernel will say otherwise.
                        BeginLoss($"after adoption no server could be reached to check the connections ({outcome.Failure})");
                        lossBegun = true;
                    }
                    break;
            }
            await Task.Delay(Backoff(attempt++), ct).ConfigureAwait(false);
        }
    }

    private enum ReplaceKind { Whole, Partial, NotTakenYet, Failed }

    private readonly record struct ReplaceOutcome(ReplaceKind Kind, string? Server = null, int SocketsTaken = 0, string? Failure = null);

    /// <summary>
    /// One round: for each candidate server in order, connect as many sockets as are dead (plus one probe when an
    /// unwatched socket may be dead), check the server, and RECONFIGURE. Sockets the kernel did not take are closed.
    /// </summary>
    private async Task<ReplaceOutcome> TryReplaceAsync(HashSet<string> refusalsSeen, CancellationToken ct)
    {
        int needed = _knownDead + (_suspect && _unwatched > _knownDead ? 1 : 0);
        if (needed == 0)
        {
            _suspect = false;
            return new ReplaceOutcome(ReplaceKind.Whole, CurrentServer);
        }
        NbdClientOptions clientOptions;
        try { clientOptions = new NbdClientOptions { Timeout = _options.ConnectLimit(_record.RequestTimeoutSeconds), Tls = _record.Tls?.Load() }; }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            return Failure($"the TLS files cannot be read: {e.Message}");
        }

        string failure = "no server tried";
        foreach (var uri in _candidates)
        {
            var connections = new List<NbdNegotiatedConnection>(needed);
            string? refusal;
            var clock = Stopwatch.StartNew();
            try
            {
                for (int i = 0; i < needed; i++) connections.Add(await NbdClient.ConnectAsync(uri, clientOptions, ct).ConfigureAwait(false));
                var negotiated = clock.Elapsed;
                refusal = await ServerAcceptance.CheckAsync(_record, connections[0], ct).ConfigureAwait(false);
                for (int i = 1; refusal is null && i < connections.Count; i++) refusal = ServerAcceptance.Check(_record, connections[i]);
                _logger.LogDebug("{Device}: {Count} connection(s) to {Server} negotiated in {Negotiated:0} ms, checked in {Checked:0} ms",
                    _device, needed, uri, negotiated.TotalMilliseconds, (clock.Elapsed - negotiated).TotalMilliseconds);
            }
            catch (Exception e) when (e is NbdClientException or SocketException or IOException)
            {
                foreach (var c in connections) c.Dispose();
                failure = $"{uri}: {e.Message}";
                _logger.LogDebug("Reconnecting {Device}: {Failure} (after {Elapsed:0} ms)", _device, failure, clock.Elapsed.TotalMilliseconds);
                continue;
            }
            if (refusal is not null)
            {
                foreach (var c in connections) await c.DisposeAsync().ConfigureAwait(false);
                failure = $"{uri} refused: {refusal}";
                if (refusalsSeen.Add(uri + "\n" + refusal))
                {
                    _logger.LogWarning("{Device}: server {Server} is not taken: {Reason}", _device, uri, refusal);
                    AddEvent(SupervisionEventKind.ServerRefused, $"{uri} was reached but not taken for {_device}: {refusal}", uri.ToString());
                }
                continue;
            }
            var outcome = GiveToKernel(uri, connections);
            if (outcome.Kind == ReplaceKind.Failed && refusalsSeen.Add("RECONFIGURE\n" + outcome.Failure))
            {
                _logger.LogWarning("{Device}: {Message}", _device, outcome.Failure);
                AddEvent(SupervisionEventKind.Error, outcome.Failure!, uri.ToString());
            }
            return outcome;
        }
        return Failure(failure);
    }

    private static ReplaceOutcome Failure(string failure) => new(ReplaceKind.Failed, Failure: failure);

    /// <summary>Hands the sockets to the kernel with RECONFIGURE and keeps the ones it took. The caller reports a failure (once).</summary>
    private ReplaceOutcome GiveToKernel(NbdUri uri, List<NbdNegotiatedConnection> connections)
    {
        var handed = new List<(Socket KernelEnd, KernelSocketWatch Watch, TlsRelay? Relay)>(connections.Count);
        try
        {
            foreach (var c in connections) handed.Add(HandOver(c, uri, _options, _logger));
            _kernel.Reconfigure(new NbdNetlinkFamily.ReconfigureRequest
            {
                Index = _record.Index,
                BackendIdentifier = _record.BackendIdentifier,
                SocketFds = handed.Select(h => (int)h.KernelEnd.SafeHandle.DangerousGetHandle()).ToList(),
            });
        }
        catch (Exception e) when (e is NetlinkException or TimeoutException or NbdKernelException or SocketException)
        {
            foreach (var h in handed) Release(h);
            foreach (var c in connections) c.Dispose();
            return Failure($"the kernel refused RECONFIGURE of {_device}: {e.Message}");
        }
        finally
        {
            // The kernel holds its own reference to every socket it took; ours (not the watch) can go.
            foreach (var h in handed) h.KernelEnd.Dispose();
        }

        int taken = 0;
        foreach (var h in handed)
        {
            if (h.Watch.IsTakenByKernel)
            {
                lock (_gate) _sockets.Add((h.Watch, h.Relay));
                taken++;
            }
            else Release(h);
        }
        _unwatched = Math.Max(0, _unwatched - taken);
        _knownDead = Math.Max(0, _knownDead - taken);
        if (taken < handed.Count || _unwatched == 0) _suspect = false; // the kernel had no other dead socket
        if (taken > 0)
        {
            lock (_gate) _server = uri.ToString();
            _logger.LogDebug("{Device}: the kernel took {Taken} of {Sent} socket(s) to {Server}", _device, taken, handed.Count, uri);
        }
        if (_knownDead == 0 && !_suspect) return new ReplaceOutcome(ReplaceKind.Whole, uri.ToString(), taken);
        if (taken == 0)
            return new ReplaceOutcome(ReplaceKind.NotTakenYet, Failure: $"the kernel has not marked the dead connection of {_device} dead yet, so it took no new socket");
        return new ReplaceOutcome(ReplaceKind.Partial, uri.ToString(), taken);
    }

    /// <summary>Keepalive on TCP, then the kernel's socket (plain, or the local end of a TLS relay) and our watch on it.</summary>
    private static (Socket KernelEnd, KernelSocketWatch Watch, TlsRelay? Relay) HandOver(NbdNegotiatedConnection connection, NbdUri uri, DeviceSupervisorOptions options, ILogger logger)
    {
        if (connection.Socket is { AddressFamily: AddressFamily.InterNetwork or AddressFamily.InterNetworkV6 } tcp)
        {
            // An idle connection to a host that vanished would otherwise look alive for ever.
            int idle = (int)Math.Max(1, options.KeepAliveIdle.TotalSeconds);
            tcp.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            tcp.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, idle);
            tcp.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, Math.Max(1, idle / 3));
            tcp.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
        }
        var (kernelEnd, relay) = KernelAttacher.HandOver(connection, logger);
        try
        {
            KernelAttacher.MakeBlocking(kernelEnd);
            return (kernelEnd, KernelSocketWatch.Watch(kernelEnd, uri.ToString()), relay);
        }
        catch
        {
            kernelEnd.Dispose();
            relay?.Stop();
            throw;
        }
    }

    private static void Release((Socket KernelEnd, KernelSocketWatch Watch, TlsRelay? Relay) handed)
    {
        handed.KernelEnd.Dispose();
        handed.Watch.Dispose();
        handed.Relay?.Stop();
    }

    private static async Task<(NbdUri Uri, List<NbdNegotiatedConnection> Connections)> ConnectFirstAsync(
        SupervisedAttachRequest request, NbdClientOptions clientOptions, CancellationToken ct)
    {
        var failures = new List<Exception>();
        foreach (var uri in request.Servers.Select(NbdUri.Parse))
        {
            var connections = new List<NbdNegotiatedConnection>();
            try
            {
                for (int i = 0; i < request.Connections; i++)
                    connections.Add(await NbdClient.ConnectAsync(uri, clientOptions, ct).ConfigureAwait(false));
                return (uri, connections);
            }
            catch (Exception e) when (e is NbdClientException or SocketException)
            {
                foreach (var c in connections) c.Dispose();
                if (request.Servers.Count == 1) throw;
                failures.Add(e);
            }
        }
        throw new NbdConnectionException(
            "No server of the list could be attached: " + string.Join("; ", failures.Select(f => f.Message)), failures.LastOrDefault());
    }

    private TimeSpan Backoff(int attempt)
    {
        var cap = CurrentState == SupervisionState.Dead ? _options.DeadBackoff : _options.MaximumBackoff;
        double ms = Math.Min(cap.TotalMilliseconds, _options.InitialBackoff.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 20)));
        // ±20 %: many clients of one rebooted server should not knock in step.
        return TimeSpan.FromMilliseconds(ms * (0.8 + 0.4 * _jitter.NextDouble()));
    }

    private SupervisionState CurrentState
    {
        get { lock (_gate) return _state; }
    }

    private string? CurrentServer
    {
        get { lock (_gate) return _server; }
    }

    private void BeginLoss(string reason)
    {
        var now = DateTimeOffset.UtcNow;
        string? server;
        lock (_gate)
        {
            _state = SupervisionState.Reconnecting;
            _lastLoss = now;
            _lastLossReason = reason;
            server = _server;
        }
        _logger.LogWarning("{Device} lost a connection: {Reason}; reconnecting (the kernel holds I/O for up to {Timeout} s)",
            _device, reason, _record.DeadConnectionTimeoutSeconds);
        AddEvent(SupervisionEventKind.ConnectionLost, $"{_device} lost a connection: {reason}", server);
    }

    private void MarkDead(string? lastFailure)
    {
        lock (_gate)
        {
            _state = SupervisionState.Dead;
            _deadSince = DateTimeOffset.UtcNow;
        }
        string why = lastFailure is null ? "" : $" (last attempt: {lastFailure})";
        _logger.LogError("{Device}: no server came back within the dead-connection timeout of {Timeout} s{Why}; the kernel now fails its I/O with EIO. Still trying.",
            _device, _record.DeadConnectionTimeoutSeconds, why);
        AddEvent(SupervisionEventKind.Dead, $"No server came back within {_record.DeadConnectionTimeoutSeconds} s{why}; I/O on {_device} fails with EIO until one does");
    }

    private void Healed(string server, string? previousServer, TimeSpan took)
    {
        bool failover = previousServer is not null && previousServer != server;
        lock (_gate)
        {
            _state = SupervisionState.Connected;
            _reconnects++;
            if (failover) _failovers++;
            _lastReconnect = DateTimeOffset.UtcNow;
            _deadSince = null;
        }
        if (failover)
        {
            _logger.LogWarning("{Device} failed over from {Previous} to {Server} after {Seconds:0.0} s", _device, previousServer, server, took.TotalSeconds);
            AddEvent(SupervisionEventKind.FailedOver, $"{_device} failed over from {previousServer} to {server} after {took.TotalSeconds:0.0} s", server);
        }
        else
        {
            _logger.LogInformation("{Device} reconnected to {Server} after {Seconds:0.0} s", _device, server, took.TotalSeconds);
            AddEvent(SupervisionEventKind.Reconnected, $"{_device} reconnected to {server} after {took.TotalSeconds:0.0} s", server);
        }
    }

    private void EndDisconnected()
    {
        SetState(SupervisionState.Disconnected);
        _logger.LogInformation("{Device} is no longer connected (or belongs to another backend); its supervision ended", _device);
        AddEvent(SupervisionEventKind.DeviceDisconnected, $"{_device} is no longer connected to {_record.BackendIdentifier}; supervision ended");
        foreach (var (watch, _) in _sockets) watch.Dispose();
    }

    private void SetState(SupervisionState state)
    {
        lock (_gate) _state = state;
    }

    private void AddEvent(SupervisionEventKind kind, string message, string? server = null)
    {
        lock (_gate)
        {
            _history.Enqueue(new SupervisionEvent(DateTimeOffset.UtcNow, kind, message, server));
            while (_history.Count > Math.Max(1, _options.HistoryCapacity)) _history.Dequeue();
        }
    }
}
