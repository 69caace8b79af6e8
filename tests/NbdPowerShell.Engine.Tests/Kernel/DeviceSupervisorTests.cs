using System.Diagnostics;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Kernel.Supervision;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// The supervision logic against real servers (our engine over TCP) and a simulated nbd driver
/// (<see cref="SimulatedNbdKernel"/>): adoption checks, replacing exactly the dead sockets, refusals, Dead and
/// recovery, failover order, the end of supervision. The real driver is exercised by SupervisorKernelTests in the VM.
/// </summary>
public sealed class DeviceSupervisorTests : IAsyncDisposable
{
    private const long Size = 4L << 20;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private readonly List<IAsyncDisposable> _cleanup = new();
    private readonly TestOutputLogger _log;

    public DeviceSupervisorTests(ITestOutputHelper output) => _log = new TestOutputLogger(output);

    public async ValueTask DisposeAsync()
    {
        for (int i = _cleanup.Count - 1; i >= 0; i--) await _cleanup[i].DisposeAsync();
    }

    private static readonly DeviceSupervisorOptions Fast = new()
    {
        InitialBackoff = TimeSpan.FromMilliseconds(20),
        MaximumBackoff = TimeSpan.FromMilliseconds(100),
        DeadBackoff = TimeSpan.FromMilliseconds(100),
        CheckInterval = TimeSpan.FromMilliseconds(50),
        ConnectTimeout = TimeSpan.FromSeconds(20),
    };

    /// <summary>An engine server with export "img" filled from <paramref name="seed"/> (same seed, same bytes).</summary>
    private TestServer Serve(int seed, long size = Size)
    {
        var server = new TestServer();
        _cleanup.Add(server);
        server.Add("img", Filled(seed, size), readOnly: true);
        return server;
    }

    private static MemoryBlockStore Filled(int seed, long size = Size)
    {
        var store = new MemoryBlockStore(size);
        var block = new byte[4096];
        for (long offset = 0; offset < size; offset += block.Length)
        {
            new Random(unchecked((int)(offset / 4096) * 31 + seed)).NextBytes(block);
            store.Write(offset, block, fua: false);
        }
        return store;
    }

    private static NbdUri Uri(TestServer server) => NbdUri.ForTcp("127.0.0.1", server.Port, "img");

    /// <summary>The record a supervised attach to <paramref name="servers"/>[0] would have written.</summary>
    private static async Task<SupervisionRecord> RecordFor(params TestServer[] servers)
    {
        await using var c = await NbdClient.ConnectAsync(Uri(servers[0]));
        return await ServerAcceptanceTests.RecordOf(c, readOnly: true, servers.Select(s => Uri(s).ToString()).ToArray());
    }

    /// <summary>A server with export "img", the record of a device attached to it, and a simulated driver holding that device.</summary>
    private async Task<(TestServer Server, SupervisionRecord Record, SimulatedNbdKernel Kernel)> Device(int slots = 1, Func<SupervisionRecord, SupervisionRecord>? configure = null)
    {
        var server = Serve(1);
        var record = await RecordFor(server);
        if (configure is not null) record = configure(record);
        return (server, record, new SimulatedNbdKernel(record.Index, record.BackendIdentifier, slots));
    }

    private DeviceSupervisor Adopt(SupervisionRecord record, SimulatedNbdKernel kernel, DeviceSupervisorOptions? options = null)
    {
        var supervisor = DeviceSupervisor.Adopt(record, _log, options ?? Fast, kernel);
        _cleanup.Add(supervisor);
        return supervisor;
    }

    private static async Task Until(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > Limit) Assert.Fail($"gave up waiting for {what}");
            await Task.Delay(20);
        }
    }

    private static int Connections(TestServer server) => server.Server.GetExport("img")!.Connections.Count;

    [Fact]
    public void A_device_with_a_long_request_timeout_gives_each_handshake_as_long()
    {
        var options = new DeviceSupervisorOptions { ConnectTimeout = TimeSpan.FromSeconds(15) };
        Assert.Equal(TimeSpan.FromSeconds(15), options.ConnectLimit(5));
        Assert.Equal(TimeSpan.FromSeconds(120), options.ConnectLimit(120));
    }

    [Fact]
    public async Task Adoption_sets_the_timeouts_and_leaves_a_healthy_device_alone()
    {
        var (server, record, kernel) = await Device(slots: 1);
        var supervisor = Adopt(record, kernel);

        Assert.Equal(5ul, kernel.TimeoutSeconds);
        Assert.Equal(30ul, kernel.DeadConnTimeoutSeconds);
        // The probe socket is offered once and, with no dead slot, not taken (and closed again).
        await Until(() => kernel.SocketsOffered == 1, "the adoption probe");
        await Until(() => Connections(server) == 0, "the refused probe connection to close");
        var snapshot = supervisor.Snapshot();
        Assert.Equal(SupervisionState.Connected, snapshot.State);
        Assert.Equal(0, snapshot.ReconnectCount);
        Assert.Equal(0, kernel.SocketsTaken);
        Assert.Equal([SupervisionEventKind.Adopted], snapshot.History.Select(e => e.Kind));
    }

    [Fact]
    public async Task A_socket_that_died_unwatched_is_replaced_and_then_watched()
    {
        var (server, record, kernel) = await Device(slots: 1);
        kernel.KillSlot(0, notify: false); // died while no supervisor ran
        var supervisor = Adopt(record, kernel);

        await Until(() => supervisor.Snapshot().ReconnectCount == 1, "the adoption to heal the dead socket");
        Assert.Equal(SupervisionState.Connected, supervisor.Snapshot().State);
        Assert.Equal(0, kernel.DeadSlots);
        Assert.Equal(1, Connections(server));

        // Now the socket is ours to watch: its death is seen (and healed) from the shutdown alone.
        kernel.KillSlot(0, notify: false);
        await Until(() => supervisor.Snapshot().ReconnectCount == 2, "the watched socket to be replaced");
        var snapshot = supervisor.Snapshot();
        Assert.Equal(SupervisionState.Connected, snapshot.State);
        Assert.Equal(2, kernel.SocketsTaken);
        Assert.Equal(Uri(server).ToString(), snapshot.Server);
        Assert.Equal(2, snapshot.History.Count(e => e.Kind == SupervisionEventKind.ConnectionLost));
        Assert.Equal(2, snapshot.History.Count(e => e.Kind == SupervisionEventKind.Reconnected));
        Assert.NotNull(snapshot.LastLossTime);
        Assert.Contains("died", snapshot.LastLossReason);
    }

    [Fact]
    public async Task Only_the_dead_sockets_of_a_multi_connection_device_are_replaced()
    {
        var (server, record, kernel) = await Device(slots: 3, configure: r => r with { Connections = 3 });
        for (int i = 0; i < 3; i++) kernel.KillSlot(i, notify: false);
        var supervisor = Adopt(record, kernel);
        await Until(() => kernel.DeadSlots == 0 && supervisor.Snapshot().State == SupervisionState.Connected, "all three sockets");
        Assert.Equal(1, supervisor.Snapshot().ReconnectCount); // one loss, however many sockets
        int offered = kernel.SocketsOffered;

        // One of three dies: exactly one new socket is offered, and taken.
        kernel.KillSlot(1);
        await Until(() => supervisor.Snapshot().ReconnectCount == 2, "the one dead socket");
        Assert.Equal(offered + 1, kernel.SocketsOffered);
        Assert.Equal(0, kernel.DeadSlots);
        await Until(() => Connections(server) == 3, "three live connections on the server");
    }

    [Fact]
    public async Task Link_dead_for_a_socket_nobody_watches_is_found_with_one_probe()
    {
        var (server, record, kernel) = await Device(slots: 2, configure: r => r with { Connections = 2 });
        var supervisor = Adopt(record, kernel);
        await Until(() => kernel.SocketsOffered == 1, "the adoption probe");
        await Until(() => supervisor.Snapshot().History.Count == 1 && supervisor.Snapshot().State == SupervisionState.Connected, "the check to end");

        kernel.KillSlot(1); // LINK_DEAD; the socket is not one of ours
        await Until(() => supervisor.Snapshot().ReconnectCount == 1, "the probe to replace it");
        Assert.Equal(0, kernel.DeadSlots);
        Assert.Contains(supervisor.Snapshot().History, e => e.Kind == SupervisionEventKind.ConnectionLost && e.Message.Contains("LINK_DEAD"));
    }

    [Fact]
    public async Task A_server_of_another_size_is_refused_until_the_device_is_dead_then_the_right_one_heals_it()
    {
        var server = Serve(1);
        var record = await RecordFor(server);
        await server.Server.RemoveExportAsync("img", force: true);
        server.Add("img", Filled(1, Size + 4096), readOnly: true);
        var kernel = new SimulatedNbdKernel(record.Index, record.BackendIdentifier, slots: 1);
        kernel.KillSlot(0, notify: false);
        var supervisor = Adopt(record with { DeadConnectionTimeoutSeconds = 1 }, kernel);

        await Until(() => supervisor.Snapshot().State == SupervisionState.Dead, "state Dead");
        var dead = supervisor.Snapshot();
        Assert.NotNull(dead.DeadSince);
        Assert.Equal(0, kernel.SocketsTaken);
        Assert.Equal(0, dead.ReconnectCount);
        var refused = Assert.Single(dead.History, e => e.Kind == SupervisionEventKind.ServerRefused);
        Assert.Contains($"{Size + 4096} bytes", refused.Message);
        Assert.Contains(dead.History, e => e.Kind == SupervisionEventKind.Dead);

        // Still trying: the right export again, and the device is whole.
        await server.Server.RemoveExportAsync("img", force: true);
        server.Add("img", Filled(1), readOnly: true);
        await Until(() => supervisor.Snapshot().State == SupervisionState.Connected, "the recovery");
        Assert.Equal(1, supervisor.Snapshot().ReconnectCount);
        Assert.Null(supervisor.Snapshot().DeadSince);
        Assert.Equal(1, kernel.SocketsTaken);
    }

    [Fact]
    public async Task Failover_goes_down_the_list_refusing_other_content()
    {
        var first = Serve(1);
        var other = Serve(2);
        var copy = Serve(1);
        var record = await RecordFor(first, other, copy);
        var kernel = new SimulatedNbdKernel(record.Index, record.BackendIdentifier, slots: 1);
        kernel.KillSlot(0, notify: false);
        var supervisor = Adopt(record, kernel);
        await Until(() => supervisor.Snapshot().ReconnectCount == 1, "the first heal");
        Assert.Equal(Uri(first).ToString(), supervisor.Snapshot().Server);

        await first.DisposeAsync(); // the first server goes away for good, and with it the device's connection
        kernel.KillSlot(0);
        await Until(() => supervisor.Snapshot().ReconnectCount == 2, "the failover");
        var snapshot = supervisor.Snapshot();
        Assert.Equal(Uri(copy).ToString(), snapshot.Server);
        Assert.Equal(1, snapshot.FailoverCount);
        var refusal = Assert.Single(snapshot.History, e => e.Kind == SupervisionEventKind.ServerRefused);
        Assert.Equal(Uri(other).ToString(), refusal.Server);
        Assert.Contains("content", refusal.Message);
        var failover = Assert.Single(snapshot.History, e => e.Kind == SupervisionEventKind.FailedOver);
        Assert.Contains(Uri(first).ToString(), failover.Message);
        Assert.Equal(0, Connections(other));
    }

    [Fact]
    public async Task A_disconnected_device_ends_supervision_and_stop_is_recorded_otherwise()
    {
        var (server, record, kernel) = await Device(slots: 1);
        var supervisor = Adopt(record, kernel);
        await Until(() => kernel.SocketsOffered == 1, "the adoption probe");
        kernel.Connected = false;
        await Until(() => supervisor.Snapshot().State == SupervisionState.Disconnected, "the end of supervision");
        Assert.Equal(SupervisionEventKind.DeviceDisconnected, supervisor.Snapshot().History[^1].Kind);
        await supervisor.StopAsync();
        Assert.Equal(SupervisionState.Disconnected, supervisor.Snapshot().State);

        var other = Adopt(record, new SimulatedNbdKernel(record.Index, record.BackendIdentifier, slots: 1));
        await other.StopAsync();
        Assert.Equal(SupervisionState.Stopped, other.Snapshot().State);
        Assert.Equal(SupervisionEventKind.Stopped, other.Snapshot().History[^1].Kind);
    }

    [Fact]
    public async Task Adoption_refuses_a_device_that_is_gone_or_belongs_to_another_backend()
    {
        var server = Serve(1);
        var record = await RecordFor(server);
        using var elsewhere = new SimulatedNbdKernel(record.Index, "nbd://elsewhere/img", slots: 1);
        var busy = Assert.Throws<NbdDeviceBusyException>(() => DeviceSupervisor.Adopt(record, _log, Fast, elsewhere));
        Assert.Contains("nbd://elsewhere/img", busy.Message);
        using var gone = new SimulatedNbdKernel(record.Index, record.BackendIdentifier, slots: 1) { Connected = false };
        Assert.Throws<NbdDeviceNotFoundException>(() => DeviceSupervisor.Adopt(record, _log, Fast, gone));
    }

    [Fact]
    public async Task History_keeps_only_the_newest_events()
    {
        var (server, record, kernel) = await Device(slots: 1);
        kernel.KillSlot(0, notify: false);
        var supervisor = Adopt(record, kernel, Fast with { HistoryCapacity = 3 });
        await Until(() => supervisor.Snapshot().ReconnectCount == 1, "the first heal");
        for (int n = 2; n <= 3; n++)
        {
            kernel.KillSlot(0);
            int expected = n;
            await Until(() => supervisor.Snapshot().ReconnectCount == expected, $"heal {n}");
        }
        var history = supervisor.Snapshot().History;
        Assert.Equal(3, history.Count);
        Assert.DoesNotContain(history, e => e.Kind == SupervisionEventKind.Adopted);
        Assert.Equal(SupervisionEventKind.Reconnected, history[^1].Kind);
        Assert.True(history.Zip(history.Skip(1)).All(p => p.First.Time <= p.Second.Time));
    }
}
