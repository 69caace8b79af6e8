using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Reliability;

/// <summary>
/// Faults: clients that vanish mid-request, a server stopped under load, and a backend that fails
/// individual calls. Each must stay contained to the request or connection it belongs to.
/// </summary>
public class FaultTests
{
    private const int BlockSize = 4096;
    private readonly ITestOutputHelper _output;

    public FaultTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public async Task Client_vanishing_mid_write_loses_nothing_acknowledged_and_does_not_disturb_others()
    {
        const long size = 4 << 20;
        using var scratch = new ScratchDirectory();
        string path = scratch.SparseFile("disk.img", size);
        var log = new CountingLogger();
        await using var server = new NbdServer(new NbdServerOptions(), log);
        var tcp = server.ListenTcp(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        server.AddExport(new ExportDefinition("d", FileBlockStore.Open(path, readOnly: false)));

        // A bystander keeps writing and verifying in the upper half the whole time.
        using var stopBystander = new CancellationTokenSource();
        long bystanderVerified = 0;
        string? bystanderFailure = null;
        var bystander = new Thread(() =>
        {
            try
            {
                using var b = RawNbdClient.Connect(tcp);
                b.Go("d");
                var rng = new Random(7);
                var data = new byte[65536];
                ulong cookie = 0;
                while (!stopBystander.IsCancellationRequested)
                {
                    rng.NextBytes(data);
                    ulong at = (ulong)(size / 2) + (ulong)rng.Next(0, 32) * 65536;
                    b.SendRequest(NbdCommand.Write, at, (uint)data.Length, ++cookie, payload: data);
                    Assert.Equal(NbdError.None, b.ReadSimpleReply().Error);
                    b.SendRequest(NbdCommand.Read, at, (uint)data.Length, ++cookie);
                    Assert.Equal(data, b.ReadSimpleReply(data.Length).Data);
                    bystanderVerified += data.Length;
                }
            }
            catch (Exception e)
            {
                bystanderFailure = e.ToString();
            }
        }) { IsBackground = true };
        bystander.Start();

        // Cut points: inside the header, right after it, one byte into the payload, half, all but one byte.
        int payloadLength = 65536;
        int[] cuts = { 1, 14, 27, 28, 29, 28 + payloadLength / 2, 28 + payloadLength - 1 };
        var expected = new byte[size / 2];
        int round = 0, acknowledged = 0;
        foreach (int cut in cuts)
        {
            foreach (bool reset in new[] { false, true })
            {
                var victim = RawNbdClient.Connect(tcp);
                victim.Go("d");
                var rng = new Random(round);
                // Acknowledged writes first, some with FUA.
                for (int i = 0; i < 4; i++)
                {
                    var block = new byte[BlockSize];
                    rng.NextBytes(block);
                    int at = (round * 4 + i) * BlockSize;
                    victim.SendRequest(NbdCommand.Write, (ulong)at, BlockSize, (ulong)i, i % 2 == 0 ? NbdCommandFlags.Fua : NbdCommandFlags.None, block);
                    Assert.Equal(NbdError.None, victim.ReadSimpleReply().Error);
                    block.CopyTo(expected, at);
                    acknowledged++;
                }
                // Then half a write into a region nobody else touches, and gone.
                var doomed = new byte[28 + payloadLength];
                BinaryPrimitives.WriteUInt32BigEndian(doomed, NbdMagic.Request);
                BinaryPrimitives.WriteUInt16BigEndian(doomed.AsSpan(6), (ushort)NbdCommand.Write);
                BinaryPrimitives.WriteUInt64BigEndian(doomed.AsSpan(8), 99);
                BinaryPrimitives.WriteUInt64BigEndian(doomed.AsSpan(16), (ulong)(size / 4));
                BinaryPrimitives.WriteUInt32BigEndian(doomed.AsSpan(24), (uint)payloadLength);
                doomed.AsSpan(28).Fill(0xEE);
                victim.Send(doomed.AsSpan(0, cut));
                if (reset)
                    victim.Socket.LingerState = new LingerOption(true, 0); // close with RST, as a crashed peer's kernel would
                victim.Dispose();
                Assert.True(ProcessProbe.WaitUntil(() => server.ConnectionCount == 1, TimeSpan.FromSeconds(10)),
                    $"cut {cut}: the vanished client's connection was not closed");
                round++;
            }
        }
        stopBystander.Cancel();
        Assert.True(bystander.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(bystanderFailure);
        Assert.True(bystanderVerified > 0);
        Assert.Empty(log.Errors);

        var onDisk = File.ReadAllBytes(path);
        Assert.Equal(expected.AsSpan(0, round * 4 * BlockSize).ToArray(), onDisk.AsSpan(0, round * 4 * BlockSize).ToArray());
        // The half-sent write was never applied, not even partly.
        Assert.True(onDisk.AsSpan((int)(size / 4), payloadLength).IndexOfAnyExcept((byte)0) < 0, "a partial payload reached the file");
        _output.WriteLine($"VANISH cuts={cuts.Length} rounds={round} acknowledgedWrites={acknowledged} bystanderBytesVerified={bystanderVerified}");
    }

    [Fact]
    public async Task Stopping_a_busy_server_drains_or_fails_requests_with_ESHUTDOWN_and_closes_every_file()
    {
        const int clients = 8, depth = 8, slotsPerClient = 256;
        // The clients' slots, then one block for the probe below.
        const long probeOffset = clients * slotsPerClient * BlockSize, size = probeOffset + BlockSize;
        using var scratch = new ScratchDirectory();
        string path = scratch.SparseFile("disk.img", size);
        var store = new FaultInjectingBlockStore(FileBlockStore.Open(path, readOnly: false))
        {
            WriteDelay = TimeSpan.FromMilliseconds(2),
            HoldWrite = offset => offset == probeOffset,
        };
        var log = new CountingLogger();
        var server = new NbdServer(new NbdServerOptions { StopGracePeriod = TimeSpan.FromSeconds(10) }, log);
        var tcp = server.ListenTcp(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        server.AddExport(new ExportDefinition("d", store));
        Assert.True(ProcessProbe.OpenDescriptorsOn(path) >= 1);

        var acked = new byte[clients][]; // latest acknowledged content per slot
        long ok = 0, shutdowns = 0, unanswered = 0;
        var lost = new List<(int Client, int Slot, byte[] Data)>(); // sent, never answered
        var failures = new List<string>();
        var started = new CountdownEvent(clients);
        var threads = Enumerable.Range(0, clients).Select(id => new Thread(() =>
        {
            var mine = acked[id] = new byte[slotsPerClient * BlockSize];
            try
            {
                using var c = RawNbdClient.Connect(tcp);
                c.Go("d");
                started.Signal();
                var inFlight = new Dictionary<ulong, (int Slot, byte[] Data)>();
                // Replies come in completion order, so two writes to one slot in flight at once may
                // finish either way round (the protocol leaves them unordered); never reuse a busy slot.
                var busy = new HashSet<int>();
                ulong next = 0;
                void SendOne()
                {
                    while (busy.Contains((int)(next % slotsPerClient)))
                        next++;
                    int slot = (int)(next % slotsPerClient);
                    busy.Add(slot);
                    var data = new byte[BlockSize];
                    BinaryPrimitives.WriteUInt64BigEndian(data, next);
                    data.AsSpan(8).Fill((byte)((ulong)id * 31 + next));
                    c.SendRequest(NbdCommand.Write, (ulong)((id * slotsPerClient + slot) * BlockSize), BlockSize, next, payload: data);
                    inFlight[next++] = (slot, data);
                }
                try
                {
                    for (int i = 0; i < depth; i++)
                        SendOne();
                    while (true)
                    {
                        var (error, cookie, _) = c.ReadSimpleReply();
                        Assert.True(inFlight.Remove(cookie, out var req), $"reply for unknown cookie {cookie}");
                        busy.Remove(req.Slot);
                        if (error == NbdError.None)
                        {
                            req.Data.CopyTo(mine, req.Slot * BlockSize);
                            Interlocked.Increment(ref ok);
                        }
                        else if (error == NbdError.Shutdown)
                            Interlocked.Increment(ref shutdowns); // per the spec, a client now stops sending
                        else
                            throw new InvalidDataException($"write {cookie} failed with {error}");
                        if (error == NbdError.None)
                            SendOne();
                    }
                }
                catch (Exception e) when (e is EndOfStreamException or SocketException)
                {
                    // The server closed the connection: requests it never read get no reply.
                    Interlocked.Add(ref unanswered, inFlight.Count);
                    lock (lost)
                        lost.AddRange(inFlight.Values.Select(r => (id, r.Slot, r.Data)));
                }
            }
            catch (Exception e)
            {
                lock (failures)
                    failures.Add($"client {id}: {e.Message}");
                started.Signal();
            }
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        Assert.True(started.Wait(TimeSpan.FromSeconds(10)));
        // Busy: every client has had writes acknowledged (a condition, not a sleep: on a loaded machine a second
        // may pass before the first reply).
        var busyBy = Stopwatch.StartNew();
        while (Interlocked.Read(ref ok) < clients * depth * 4 && failures.Count == 0 && busyBy.Elapsed < TimeSpan.FromSeconds(60))
            Thread.Sleep(10);
        Assert.True(Interlocked.Read(ref ok) >= clients * depth * 4, $"only {Interlocked.Read(ref ok)} writes acknowledged in 60 s: {string.Join("; ", failures)}");

        // The probe: one write the store holds in flight, so the stop must wait for it, and one more write sent after
        // the stop began, which the server must refuse with ESHUTDOWN (whether the busy clients also send one while
        // the stop runs depends on timing, so they are not relied on for that).
        using var probe = RawNbdClient.Connect(tcp);
        probe.Go("d");
        var held = new byte[BlockSize];
        held.AsSpan().Fill(0x5A);
        probe.SendRequest(NbdCommand.Write, (ulong)probeOffset, BlockSize, 1, payload: held);
        var heldBy = Stopwatch.StartNew();
        while (store.HeldWrites == 0 && heldBy.Elapsed < TimeSpan.FromSeconds(60))
            Thread.Sleep(10);
        Assert.Equal(1, store.HeldWrites);

        var stopClock = Stopwatch.StartNew();
        // StopAsync marks every connection as stopping before it first waits, so the next request is a late one.
        var stopping = server.StopAsync();
        probe.SendRequest(NbdCommand.Write, (ulong)probeOffset, BlockSize, 2, payload: new byte[BlockSize]);
        var (lateError, lateCookie, _) = probe.ReadSimpleReply();
        Assert.Equal((NbdError.Shutdown, 2UL), (lateError, lateCookie));
        Assert.False(stopping.IsCompleted, "the stop finished while a write was still in flight");
        store.ReleaseHeldWrites();
        var (heldError, heldCookie, _) = probe.ReadSimpleReply();
        Assert.Equal((NbdError.None, 1UL), (heldError, heldCookie));
        // As a client should once answered ESHUTDOWN: leave, so the server need not wait out its grace period.
        probe.Dispose();
        await stopping.WaitAsync(TimeSpan.FromSeconds(20));
        stopClock.Stop();
        Assert.True(threads.All(t => t.Join(TimeSpan.FromSeconds(10))), "a client never saw its connection close");

        Assert.Empty(failures);
        Assert.Empty(log.Errors);
        Assert.True(store.Disposed);
        Assert.Equal(0, ProcessProbe.OpenDescriptorsOn(path));
        // The held write was drained, not dropped; the refused one never reached the store.
        using (var file = File.OpenRead(path))
        {
            var probed = new byte[BlockSize];
            file.Position = probeOffset;
            file.ReadExactly(probed);
            Assert.True(probed.AsSpan().SequenceEqual(held), "the write held in flight during the stop is not in the file");
        }
        // Everything acknowledged is in the file.
        var onDisk = File.ReadAllBytes(path);
        for (int id = 0; id < clients; id++)
        {
            for (int slot = 0; slot < slotsPerClient; slot++)
            {
                var want = acked[id].AsSpan(slot * BlockSize, BlockSize);
                if (want.IndexOfAnyExcept((byte)0) < 0)
                    continue;
                var have = onDisk.AsSpan((id * slotsPerClient + slot) * BlockSize, BlockSize);
                ulong haveCookie = BinaryPrimitives.ReadUInt64BigEndian(have);
                int client = id;
                Assert.True(want.SequenceEqual(have),
                    $"client {id} slot {slot}: an acknowledged write is missing (acknowledged write {BinaryPrimitives.ReadUInt64BigEndian(want)}, the file holds write {haveCookie}, which was {(lost.Any(l => l.Client == client && BinaryPrimitives.ReadUInt64BigEndian(l.Data) == haveCookie) ? "never answered" : "answered with an error")})");
            }
        }
        // A request without a reply must not have been carried out either: the server either answers
        // what it read (drained, or ESHUTDOWN) or never read it.
        var applied = lost.Where(l => l.Data.AsSpan().SequenceEqual(onDisk.AsSpan((l.Client * slotsPerClient + l.Slot) * BlockSize, BlockSize))).ToList();
        Assert.True(applied.Count == 0, $"{applied.Count} write(s) reached the file but were never answered");
        _output.WriteLine($"STOP clients={clients} depth={depth} acknowledged={ok} eshutdown={shutdowns} unansweredAtClose={unanswered} stopMs={stopClock.ElapsedMilliseconds} fdsAfter=0");
    }

    [Fact]
    public async Task Backend_errors_become_the_right_NBD_error_for_that_request_only()
    {
        const int size = 2 << 20;
        var array = new ArrayBlockStore(size);
        new Random(3).NextBytes(array.Data);
        var store = new FaultInjectingBlockStore(array);
        // Faulty 4 KiB blocks, each with the errno its backend call throws and the NBD error a client must see.
        var faults = new (string Op, int Block, Func<Exception> Make, NbdError Expected)[]
        {
            ("read", 16, () => new StorageException(5, "EIO"), NbdError.IO),
            ("read", 17, () => new StorageException(12, "ENOMEM"), NbdError.NoMemory),
            ("read", 18, () => new InvalidOperationException("backend bug"), NbdError.IO),
            ("write", 32, () => new StorageException(28, "ENOSPC"), NbdError.NoSpace),
            ("write", 33, () => new StorageException(122, "EDQUOT"), NbdError.NoSpace),
            ("write", 34, () => new StorageException(27, "EFBIG"), NbdError.NoSpace),
            ("write", 35, () => new StorageException(30, "EROFS"), NbdError.Perm),
            ("write", 36, () => new StorageException(5, "EIO"), NbdError.IO),
            ("write", 37, () => new StorageException(71, "EPROTO"), NbdError.IO),
            ("zero", 48, () => new StorageException(95, "ENOTSUP"), NbdError.IO), // ENOTSUP only answers FAST_ZERO
            ("zero", 49, () => new StorageException(28, "ENOSPC"), NbdError.NoSpace),
            ("trim", 50, () => new StorageException(5, "EIO"), NbdError.IO),
        };
        store.Fault = (op, offset, length) =>
        {
            foreach (var f in faults)
            {
                long start = (long)f.Block * BlockSize;
                if (f.Op == op && offset < start + BlockSize && offset + length > start)
                    return f.Make();
            }
            return null;
        };
        var log = new CountingLogger();
        await using var server = new NbdServer(new NbdServerOptions(), log);
        var tcp = server.ListenTcp(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        server.AddExport(new ExportDefinition("d", store));

        // Two clients at once, one per reply mode, each pipelining a mix of good and faulty requests.
        var results = await Task.WhenAll(new[] { false, true }.Select(structured => Task.Run(() =>
        {
            using var c = RawNbdClient.Connect(tcp);
            c.Go("d", structured);
            var rng = new Random(structured ? 11 : 12);
            int faulted = 0, good = 0;
            ulong cookie = 0;
            for (int window = 0; window < 40; window++)
            {
                var expected = new Dictionary<ulong, (NbdCommand Cmd, int Block, NbdError Error)>();
                for (int i = 0; i < 16; i++)
                {
                    int block = rng.Next(3) == 0 ? faults[rng.Next(faults.Length)].Block : rng.Next(64, 256);
                    var cmd = new[] { NbdCommand.Read, NbdCommand.Write, NbdCommand.WriteZeroes, NbdCommand.Trim }[rng.Next(4)];
                    string op = cmd switch { NbdCommand.Read => "read", NbdCommand.Write => "write", NbdCommand.WriteZeroes => "zero", _ => "trim" };
                    var hit = faults.FirstOrDefault(f => f.Block == block && f.Op == op);
                    var error = hit.Op == null ? NbdError.None : hit.Expected;
                    // Good writes use blocks nobody reads concurrently with a different expectation: data is checked on reads of untouched blocks only.
                    if (cmd != NbdCommand.Read && error == NbdError.None)
                        block = 256 + rng.Next(0, 64) + (structured ? 0 : 64);
                    c.SendRequest(cmd, (ulong)block * BlockSize, BlockSize, ++cookie, payload: cmd == NbdCommand.Write ? new byte[BlockSize] : default);
                    expected[cookie] = (cmd, block, error);
                }
                for (int i = 0; i < 16; i++)
                {
                    var first = c.ReadChunk();
                    var (cmd, block, error) = expected[first.Cookie];
                    NbdError got;
                    if (first.Type == NbdReplyChunkType.None && first.Payload.Length == 4)
                    {
                        got = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(first.Payload);
                        if (got == NbdError.None && cmd == NbdCommand.Read)
                            Assert.Equal(array.Data.AsSpan(block * BlockSize, BlockSize).ToArray(), c.ReadExactly(BlockSize));
                    }
                    else if (first.Type == NbdReplyChunkType.Error)
                        got = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(first.Payload);
                    else
                    {
                        Assert.Equal(NbdReplyChunkType.OffsetData, first.Type);
                        Assert.Equal(array.Data.AsSpan(block * BlockSize, BlockSize).ToArray(), first.Payload.AsSpan(8).ToArray());
                        got = NbdError.None;
                    }
                    Assert.True(error == got, $"{cmd} of block {block} ({(structured ? "structured" : "simple")}): expected {error}, got {got}");
                    if (error == NbdError.None) good++; else faulted++;
                }
            }
            return (faulted, good);
        })));

        Assert.Equal(results.Sum(r => r.faulted), store.FaultsInjected);
        Assert.True(results.All(r => r.faulted > 0 && r.good > 0));
        // Only the deliberately unexpected exception is logged as an error.
        Assert.All(log.Errors, e => Assert.Contains("backend bug", e));
        _output.WriteLine($"BACKEND faultKinds={faults.Length} faultsInjected={store.FaultsInjected} goodRequests={results.Sum(r => r.good)} clients=2");
    }
}
