using System.Buffers.Binary;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

public class TransmissionTests
{
    private const int Size = 1 << 20;

    private static (TestServer, ArrayBlockStore) Serve(StoreCapabilities? caps = null, bool readOnly = false)
    {
        var server = new TestServer();
        var store = caps is { } c ? new ArrayBlockStore(Size, c) : new ArrayBlockStore(Size);
        server.Add("d", store, readOnly: readOnly);
        return (server, store);
    }

    [Fact]
    public async Task Write_then_read_round_trips_with_simple_replies()
    {
        var (server, store) = Serve();
        await using var _ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        var data = Enumerable.Range(0, 3000).Select(i => (byte)(i * 7)).ToArray();
        c.SendRequest(NbdCommand.Write, 1234, (uint)data.Length, cookie: 42, payload: data);
        var w = c.ReadSimpleReply();
        Assert.Equal((NbdError.None, 42UL), (w.Error, w.Cookie));
        c.SendRequest(NbdCommand.Read, 1234, (uint)data.Length, cookie: 43);
        var r = c.ReadSimpleReply(data.Length);
        Assert.Equal(43UL, r.Cookie);
        Assert.Equal(data, r.Data);
        Assert.Equal(data, store.Data.AsSpan(1234, data.Length).ToArray());
    }

    [Fact]
    public async Task Flags_advertise_exactly_what_the_store_does()
    {
        var (server, _) = Serve(StoreCapabilities.Write | StoreCapabilities.Flush);
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        var (_, flags) = c.Go("d");
        Assert.True(flags.HasFlag(TransmissionFlags.HasFlags));
        Assert.True(flags.HasFlag(TransmissionFlags.SendFlush));
        Assert.False(flags.HasFlag(TransmissionFlags.SendFua));
        Assert.False(flags.HasFlag(TransmissionFlags.SendTrim));
        Assert.False(flags.HasFlag(TransmissionFlags.SendWriteZeroes));
        Assert.False(flags.HasFlag(TransmissionFlags.CanMultiConn));
        Assert.False(flags.HasFlag(TransmissionFlags.ReadOnly));
        Assert.False(flags.HasFlag(TransmissionFlags.SendDf)); // no structured replies negotiated
    }

    [Theory]
    [InlineData(NbdCommand.Read, (ulong)Size, 1u, NbdError.Invalid)]
    [InlineData(NbdCommand.Write, (ulong)Size - 10, 11u, NbdError.NoSpace)]
    [InlineData(NbdCommand.WriteZeroes, (ulong)Size, 1u, NbdError.NoSpace)]
    [InlineData(NbdCommand.Trim, ulong.MaxValue - 5, 100u, NbdError.Invalid)]  // offset+length overflows
    [InlineData(NbdCommand.Read, ulong.MaxValue, 1u, NbdError.Invalid)]
    [InlineData(NbdCommand.Flush, 1UL, 0u, NbdError.Invalid)]                   // FLUSH must be 0/0
    [InlineData((NbdCommand)77, 0UL, 0u, NbdError.Invalid)]                    // unknown command
    [InlineData(NbdCommand.BlockStatus, 0UL, 512u, NbdError.Invalid)]          // without structured replies
    [InlineData(NbdCommand.Read, 0UL, 0u, NbdError.Invalid)]                   // zero length: nbdkit's answers
    [InlineData(NbdCommand.Write, 0UL, 0u, NbdError.NoSpace)]
    [InlineData(NbdCommand.Trim, 0UL, 0u, NbdError.Invalid)]
    [InlineData(NbdCommand.WriteZeroes, 0UL, 0u, NbdError.NoSpace)]
    [InlineData(NbdCommand.Cache, 0UL, 0u, NbdError.Invalid)]
    public async Task Bad_requests_get_the_errno_the_spec_names_and_the_connection_survives(NbdCommand cmd, ulong offset, uint length, NbdError expected)
    {
        var (server, _) = Serve();
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        var payload = cmd == NbdCommand.Write ? new byte[length] : Array.Empty<byte>();
        c.SendRequest(cmd, offset, length, cookie: 9, payload: payload);
        var r = c.ReadSimpleReply();
        Assert.Equal(expected, r.Error);
        Assert.Equal(9UL, r.Cookie);
        AssertStillServes(c);
    }

    [Theory]
    [InlineData(NbdCommand.Read)]
    [InlineData(NbdCommand.Write)]
    [InlineData(NbdCommand.Trim)]
    [InlineData(NbdCommand.WriteZeroes)]
    [InlineData(NbdCommand.Cache)]
    [InlineData(NbdCommand.BlockStatus)]
    public async Task Zero_length_requests_with_structured_replies_get_one_valid_error_reply(NbdCommand cmd)
    {
        var (server, _) = Serve(StoreCapabilities.Write | StoreCapabilities.Flush | StoreCapabilities.Trim |
                                StoreCapabilities.WriteZeroes | StoreCapabilities.Extents);
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d", structured: true, baseAllocation: true);
        c.SendRequest(cmd, 4096, 0, cookie: 77);
        var chunk = c.ReadChunk();
        Assert.Equal(77UL, chunk.Cookie);
        // Never an OFFSET_DATA chunk without data (libnbd drops the connection on that): one final error.
        Assert.True((chunk.Flags & (ushort)NbdReplyChunkFlags.Done) != 0, "the only chunk must be final");
        Assert.Contains(chunk.Type, new[] { NbdReplyChunkType.Error, NbdReplyChunkType.None });
        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload);
        Assert.Equal(cmd is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid, error);
        c.SendRequest(NbdCommand.Read, 0, 16, cookie: 1000);
        var ok = c.ReadRead(structured: true, 0, 16);
        Assert.Equal((NbdError.None, 1000UL), (ok.Error, ok.Cookie));
    }

    private static void AssertStillServes(RawNbdClient c)
    {
        c.SendRequest(NbdCommand.Read, 0, 16, cookie: 1000);
        var ok = c.ReadSimpleReply(16);
        Assert.Equal((NbdError.None, 1000UL), (ok.Error, ok.Cookie));
    }

    [Theory]
    [InlineData(NbdCommand.Read, NbdCommandFlags.NoHole)]
    [InlineData(NbdCommand.Write, NbdCommandFlags.ReqOne)]
    [InlineData(NbdCommand.Read, NbdCommandFlags.DontFragment)]    // DF needs structured replies
    [InlineData(NbdCommand.Write, (NbdCommandFlags)0x100)]         // unknown flag
    [InlineData(NbdCommand.WriteZeroes, NbdCommandFlags.FastZero)] // store has no fast zero
    public async Task Misapplied_or_unknown_flags_are_EINVAL(NbdCommand cmd, NbdCommandFlags flags)
    {
        var (server, _) = Serve();
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        uint length = 512;
        c.SendRequest(cmd, 0, length, flags: flags, payload: cmd == NbdCommand.Write ? new byte[length] : default);
        Assert.Equal(NbdError.Invalid, c.ReadSimpleReply().Error);
        AssertStillServes(c);
    }

    [Fact]
    public async Task Read_only_export_refuses_writes_with_EPERM_and_keeps_bytes()
    {
        var (server, store) = Serve(readOnly: true);
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        var (_, flags) = c.Go("d");
        Assert.True(flags.HasFlag(TransmissionFlags.ReadOnly));
        Assert.False(flags.HasFlag(TransmissionFlags.SendTrim));
        c.SendRequest(NbdCommand.Write, 0, 4, payload: new byte[] { 1, 2, 3, 4 });
        Assert.Equal(NbdError.Perm, c.ReadSimpleReply().Error);
        c.SendRequest(NbdCommand.Trim, 0, 4096);
        Assert.Equal(NbdError.Perm, c.ReadSimpleReply().Error);
        Assert.All(store.Data, b => Assert.Equal(0, b));
        AssertStillServes(c);
    }

    [Fact]
    public async Task Oversized_write_is_drained_then_refused_and_absurd_one_disconnects()
    {
        var (server, _) = Serve();
        await using var __ = server;
        // 64 MiB + 1 past a tiny export: must still be drained (not parsed as headers).
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        uint big = NbdLimits.MaxPayload + 1;
        c.SendRequest(NbdCommand.Write, 0, big, cookie: 5, payload: new byte[big]);
        var r = c.ReadSimpleReply();
        Assert.Equal(5UL, r.Cookie);
        Assert.NotEqual(NbdError.None, r.Error);
        AssertStillServes(c);

        using var d = RawNbdClient.Connect(server.TcpEndPoint);
        d.Go("d");
        d.SendRequest(NbdCommand.Write, 0, uint.MaxValue);
        Assert.True(d.WaitForClose());
    }

    [Fact]
    public async Task Reads_up_to_64_MiB_are_served()
    {
        await using var server = new TestServer();
        var store = server.Add("big", new ArrayBlockStore(NbdLimits.MaxPayload));
        store.Data[^1] = 0x5a;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("big");
        c.SendRequest(NbdCommand.Read, 0, NbdLimits.MaxPayload);
        var r = c.ReadSimpleReply(NbdLimits.MaxPayload);
        Assert.Equal(NbdError.None, r.Error);
        Assert.Equal(0x5a, r.Data[^1]);
    }

    [Fact]
    public async Task Bad_request_magic_disconnects_and_other_clients_keep_being_served()
    {
        var (server, _) = Serve();
        await using var __ = server;
        using var good = RawNbdClient.Connect(server.TcpEndPoint);
        good.Go("d");
        using var bad = RawNbdClient.Connect(server.TcpEndPoint);
        bad.Go("d");
        bad.SendRequest(NbdCommand.Read, 0, 1, magic: 0xdeadbeef);
        Assert.True(bad.WaitForClose());
        AssertStillServes(good);
    }

    [Fact]
    public async Task Requests_run_concurrently_and_replies_may_come_out_of_order()
    {
        await using var server = new TestServer();
        var store = server.Add("d", new ArrayBlockStore(Size));
        var gate = new ManualResetEventSlim();
        // The first read blocks until a later request has been answered.
        store.Fault = op => { if (op == "read" && !gate.IsSet) gate.Wait(5000); return null; };
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Read, 0, 512, cookie: 1);
        c.SendRequest(NbdCommand.Write, 4096, 4, cookie: 2, payload: new byte[] { 1, 2, 3, 4 });
        var first = c.ReadSimpleReply();
        Assert.Equal(2UL, first.Cookie);
        gate.Set();
        Assert.Equal(1UL, c.ReadSimpleReply(512).Cookie);
    }

    [Fact]
    public async Task Storage_errors_become_nbd_errors_for_that_request_only()
    {
        await using var server = new TestServer();
        var store = server.Add("d", new ArrayBlockStore(Size));
        int n = 0;
        store.Fault = op => op == "write" && Interlocked.Increment(ref n) == 1 ? new StorageException(28, "full")
                          : op == "flush" ? new StorageException(5, "io") : null;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Write, 0, 4, payload: new byte[4]);
        Assert.Equal(NbdError.NoSpace, c.ReadSimpleReply().Error);
        c.SendRequest(NbdCommand.Write, 0, 4, payload: new byte[4]);
        Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
        c.SendRequest(NbdCommand.Flush, 0, 0);
        Assert.Equal(NbdError.IO, c.ReadSimpleReply().Error);
        var stats = server.Server.GetExport("d")!;
        Assert.Equal(2, stats.Io.Errors);
    }

    [Fact]
    public async Task Fua_and_flush_reach_the_store()
    {
        await using var server = new TestServer();
        var store = server.Add("d", new ArrayBlockStore(Size));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Write, 0, 4, flags: NbdCommandFlags.Fua, payload: new byte[4]);
        Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
        c.SendRequest(NbdCommand.Flush, 0, 0);
        Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
        Assert.Equal(1, store.FuaWrites);
        Assert.Equal(1, store.Flushes);
    }

    [Fact]
    public async Task Structured_read_sends_holes_as_OFFSET_HOLE_and_data_as_OFFSET_DATA()
    {
        // Large enough that even a store whose extents cost syscalls sends holes.
        const int Segment = 2 * 1024 * 1024;
        await using var server = new TestServer();
        var store = server.Add("d", new ArrayBlockStore(4 * Segment, StoreCapabilities.Write | StoreCapabilities.Extents));
        store.Data.AsSpan(Segment, Segment).Fill(0xaa);
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        var (_, flags) = c.Go("d", structured: true);
        Assert.True(flags.HasFlag(TransmissionFlags.SendDf));
        c.SendRequest(NbdCommand.Read, 0, 3 * Segment, cookie: 7);
        var chunks = new List<RawNbdClient.Chunk>();
        do chunks.Add(c.ReadChunk()); while ((chunks[^1].Flags & 1) == 0);
        Assert.Equal(new[] { NbdReplyChunkType.OffsetHole, NbdReplyChunkType.OffsetData, NbdReplyChunkType.OffsetHole },
            chunks.Select(x => x.Type));
        Assert.Equal((ulong)Segment, BinaryPrimitives.ReadUInt64BigEndian(chunks[1].Payload));
        Assert.All(chunks[1].Payload.Skip(8), b => Assert.Equal(0xaa, b));
        Assert.Equal((uint)Segment, BinaryPrimitives.ReadUInt32BigEndian(chunks[2].Payload.AsSpan(8)));

        // Small reads from a store whose extent queries cost syscalls go out as one data chunk.
        c.SendRequest(NbdCommand.Read, 0, 4096, cookie: 10);
        var small = c.ReadChunk();
        Assert.Equal((NbdReplyChunkType.OffsetData, (ushort)1), (small.Type, small.Flags));

        // DF: exactly one data chunk.
        c.SendRequest(NbdCommand.Read, 0, 3 * Segment, cookie: 8, flags: NbdCommandFlags.DontFragment);
        var one = c.ReadChunk();
        Assert.Equal((NbdReplyChunkType.OffsetData, (ushort)1), (one.Type, one.Flags));
        Assert.Equal(8 + 3 * Segment, one.Payload.Length);

        // An error on a structured read is an ERROR chunk.
        c.SendRequest(NbdCommand.Read, 4 * Segment, 1, cookie: 9);
        var err = c.ReadChunk();
        Assert.Equal(NbdReplyChunkType.Error, err.Type);
        Assert.Equal((uint)NbdError.Invalid, BinaryPrimitives.ReadUInt32BigEndian(err.Payload));
    }

    [Fact]
    public async Task Block_status_reports_holes_and_honours_REQ_ONE()
    {
        await using var server = new TestServer();
        var store = server.Add("d", new ArrayBlockStore(Size, StoreCapabilities.Write | StoreCapabilities.Extents));
        store.Data.AsSpan(8192, 4096).Fill(1);
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d", structured: true, baseAllocation: true);
        c.SendRequest(NbdCommand.BlockStatus, 0, 16384, cookie: 3);
        var chunk = c.ReadChunk();
        Assert.Equal(NbdReplyChunkType.BlockStatus, chunk.Type);
        var extents = Decode(chunk.Payload);
        Assert.Equal(new[] { (8192u, 3u), (4096u, 0u), (4096u, 3u) }, extents);

        c.SendRequest(NbdCommand.BlockStatus, 0, 16384, cookie: 4, flags: NbdCommandFlags.ReqOne);
        var one = Decode(c.ReadChunk().Payload);
        Assert.Single(one);
        Assert.True(one[0].Item1 <= 16384);
    }

    private static List<(uint, uint)> Decode(byte[] payload)
    {
        var list = new List<(uint, uint)>();
        for (int i = 4; i < payload.Length; i += 8)
            list.Add((BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 4))));
        return list;
    }

    [Fact]
    public async Task Disc_closes_after_in_flight_requests_are_answered()
    {
        var (server, _) = Serve();
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Write, 0, 4, cookie: 1, payload: new byte[4]);
        c.SendRequest(NbdCommand.Disconnect, 0, 0, cookie: 2);
        Assert.Equal(1UL, c.ReadSimpleReply().Cookie);
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Graceful_stop_fails_new_requests_with_ESHUTDOWN_and_closes()
    {
        // The grace period only bounds how long the stop waits for the held read; the stop ends as soon as it is
        // answered, so a long one costs nothing and cannot expire while a loaded machine gets to gate.Set().
        var server = new TestServer(new NbdServerOptions { StopGracePeriod = TimeSpan.FromSeconds(60) });
        var store = server.Add("d", new ArrayBlockStore(Size));
        var reading = new ManualResetEventSlim();
        var gate = new ManualResetEventSlim();
        store.Fault = op => { if (op == "read") { reading.Set(); gate.Wait(TimeSpan.FromSeconds(60)); } return null; };
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Read, 0, 512, cookie: 1);
        Assert.True(reading.Wait(TimeSpan.FromSeconds(30)), "the first read never reached the store");
        // StopAsync raises the stop flag before its first await, so requests sent after this line are refused.
        var stop = server.DisposeAsync().AsTask();
        Assert.True(server.Server.IsStopping);
        c.SendRequest(NbdCommand.Read, 0, 512, cookie: 2);
        var shut = c.ReadSimpleReply();
        Assert.Equal((NbdError.Shutdown, 2UL), (shut.Error, shut.Cookie));
        gate.Set();
        var inFlight = c.ReadSimpleReply(512);
        Assert.Equal((NbdError.None, 1UL), (inFlight.Error, inFlight.Cookie));
        Assert.True(c.WaitForClose());
        // The server waits for the client's close (within the grace period) before it finishes stopping.
        c.Dispose();
        await stop;
        Assert.True(store.Disposed);
    }

    [Fact]
    public async Task Statistics_count_requests_bytes_and_clients()
    {
        var (server, _) = Serve();
        await using var __ = server;
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("d");
        c.SendRequest(NbdCommand.Write, 0, 100, payload: new byte[100]);
        c.ReadSimpleReply();
        c.SendRequest(NbdCommand.Read, 0, 50);
        c.ReadSimpleReply(50);
        var s = server.Server.GetExport("d")!;
        Assert.Equal((1L, 1L, 50L, 100L), (s.Io.Reads, s.Io.Writes, s.Io.BytesRead, s.Io.BytesWritten));
        var conn = Assert.Single(s.Connections);
        Assert.StartsWith("127.0.0.1:", conn.ClientAddress);
        Assert.Equal(1, s.TotalConnections);
    }

    [Fact]
    public async Task Served_socket_pair_works_without_a_listener()
    {
        await using var server = new TestServer();
        server.Add("d", new ArrayBlockStore(Size));
        var (a, b) = SocketPair();
        var done = server.Server.ServeConnectedSocket(a);
        using (var c = RawNbdClient.Wrap(b))
        {
            c.Go("d");
            c.SendRequest(NbdCommand.Read, 0, 8);
            Assert.Equal(NbdError.None, c.ReadSimpleReply(8).Error);
            c.SendRequest(NbdCommand.Disconnect, 0, 0);
            Assert.True(c.WaitForClose());
        }
        await done.WaitAsync(TimeSpan.FromSeconds(5));
    }

    internal static (System.Net.Sockets.Socket, System.Net.Sockets.Socket) SocketPair()
    {
        // A connected Unix socket pair via a temporary listener.
        var path = Path.Combine(Path.GetTempPath(), $"nbdps-pair-{Guid.NewGuid():N}.sock");
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var client = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        client.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        var server = listener.Accept();
        File.Delete(path);
        return (server, client);
    }
}
