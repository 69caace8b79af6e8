using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>
/// The pipelined client: reply matching and chunk parsing against a scripted server that sends what real servers
/// only do by chance, then I/O against the real peers (nbdkit, qemu-nbd, nbd-server, our server with TLS).
/// </summary>
public class NbdBlockClientTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    private static byte[] Pattern(ulong offset, uint length)
    {
        var data = new byte[length];
        for (int i = 0; i < data.Length; i++)
            data[i] = (byte)((offset + (ulong)i) * 7 + 3);
        return data;
    }

    /// <summary>A private directory with a 4 MiB zeroed image file in it (the caller deletes the directory).</summary>
    private static (string Dir, string Image) TempImage(string prefix)
    {
        string dir = Directory.CreateTempSubdirectory(prefix).FullName;
        string image = Path.Combine(dir, "disk.img");
        using (var f = File.Create(image)) f.SetLength(4 << 20);
        return (dir, image);
    }

    /// <summary>nbdkit restarts on the same socket: with Reconnect the next requests open a new connection and carry on; without, they fail.</summary>
    [Fact]
    public async Task Reconnects_after_the_server_restarts_only_when_asked()
    {
        var (dir, image) = TempImage("nbdps-reconnect-");
        try
        {
            string sock = Path.Combine(dir, "nbd.sock");
            var data = Pattern(0, 1 << 20);
            var first = PeerServer.NbdkitUnixAt(sock, "file", image);
            NbdBlockClient reconnecting, plain;
            try
            {
                reconnecting = await NbdBlockClient.ConnectAsync(first.Uri, new NbdBlockClientOptions { Reconnect = true });
                plain = await NbdBlockClient.ConnectAsync(first.Uri);
                await reconnecting.WriteAsync(0, data).AsTask().WaitAsync(Limit);
            }
            finally { first.Dispose(); }
            await using (reconnecting)
            await using (plain)
            {
                using var restarted = PeerServer.NbdkitUnixAt(sock, "file", image);
                var back = new byte[data.Length];
                await reconnecting.ReadAsync(0, back).AsTask().WaitAsync(Limit);
                Assert.Equal(data, back);
                Assert.True(reconnecting.Reconnects >= 1, "the client must have opened a new connection");
                await Assert.ThrowsAnyAsync<NbdClientException>(() => plain.ReadAsync(0, back).AsTask().WaitAsync(Limit));
                Assert.Equal(0, plain.Reconnects);
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>
    /// The connection breaks while a read and a write wait at the server (nbdkit's delay filter holds them): with
    /// Reconnect both are sent once more on a fresh connection and complete as if nothing happened. The socket
    /// path is a symlink moved to a second nbdkit before the first dies, so the reconnect never races a restart.
    /// </summary>
    [Fact]
    public async Task Requests_in_flight_when_the_connection_breaks_are_sent_again_with_reconnect()
    {
        var (dir, image) = TempImage("nbdps-resend-");
        try
        {
            var before = Pattern(0, 1 << 20);
            var written = Pattern(7, 1 << 20);
            using (var f = File.OpenWrite(image)) f.Write(before);
            string sock = Path.Combine(dir, "nbd.sock");
            using var slow = PeerServer.NbdkitUnixAt(Path.Combine(dir, "slow.sock"), "--filter=delay", "file", image, "delay-read=30", "delay-write=30");
            using var fast = PeerServer.NbdkitUnixAt(Path.Combine(dir, "fast.sock"), "file", image);
            File.CreateSymbolicLink(sock, Path.Combine(dir, "slow.sock"));
            await using var client = await NbdBlockClient.ConnectAsync(NbdUri.ForUnix(sock), new NbdBlockClientOptions { Reconnect = true, Connections = 1 });

            var back = new byte[before.Length];
            var read = client.ReadAsync(0, back).AsTask();
            var write = client.WriteAsync(1 << 20, written).AsTask();
            for (int i = 0; i < 600 && client.InFlight < 2; i++) await Task.Delay(50);
            Assert.Equal(2, client.InFlight);
            File.CreateSymbolicLink(Path.Combine(dir, "next.sock"), Path.Combine(dir, "fast.sock"));
            File.Move(Path.Combine(dir, "next.sock"), sock, overwrite: true);
            slow.Kill();

            await Task.WhenAll(read, write).WaitAsync(Limit);
            Assert.Equal(before, back);
            Assert.Equal(1, client.Reconnects);
            await client.FlushAsync().AsTask().WaitAsync(Limit);
            Assert.Equal(written, File.ReadAllBytes(image).AsSpan(1 << 20, written.Length).ToArray());
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public async Task Replies_in_reverse_order_split_into_data_and_hole_chunks_land_in_the_right_buffers()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.None, structured: true, async s =>
        {
            var requests = new List<ScriptedRequest>();
            for (int i = 0; i < 8; i++)
                requests.Add(await s.ReadRequestAsync());
            requests.Reverse();
            foreach (var r in requests)
            {
                uint half = r.Length / 2, quarter = r.Length / 4;
                await s.DataChunkAsync(r.Cookie, r.Offset + half, Pattern(r.Offset + half, half), done: false);
                await s.HoleChunkAsync(r.Cookie, r.Offset, quarter, done: false);
                await s.DataChunkAsync(r.Cookie, r.Offset + quarter, Pattern(r.Offset + quarter, quarter), done: false);
                await s.ChunkAsync(r.Cookie, NbdReplyChunkType.None, done: true, []);
            }
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        Assert.True(client.StructuredReplies);
        Assert.True(client.SupportsBlockStatus);
        var buffers = Enumerable.Range(0, 8).Select(_ => Enumerable.Repeat((byte)0xEE, 4096).ToArray()).ToArray();
        var reads = Enumerable.Range(0, 8).Select(i => client.ReadAsync(i * 65536L, buffers[i]).AsTask()).ToArray();
        await Task.WhenAll(reads).WaitAsync(Limit);
        for (int i = 0; i < 8; i++)
        {
            ulong at = (ulong)i * 65536;
            var expected = new byte[1024].Concat(Pattern(at + 1024, 3072)).ToArray();
            Assert.Equal(expected, buffers[i]);
        }
        Assert.Equal(0, client.InFlight);
    }

    [Fact]
    public async Task An_error_chunk_fails_only_its_request_with_the_servers_message()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.None, structured: true, async s =>
        {
            var bad = await s.ReadRequestAsync();
            await s.ErrorChunkAsync(bad.Cookie, NbdError.IO, "injected failure");
            var good = await s.ReadRequestAsync();
            await s.DataChunkAsync(good.Cookie, good.Offset, Pattern(good.Offset, good.Length), done: true);
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var e = await Assert.ThrowsAsync<NbdCommandException>(() => client.ReadAsync(0, new byte[512]).AsTask().WaitAsync(Limit));
        Assert.Equal(NbdError.IO, e.Error);
        Assert.Equal(NbdCommand.Read, e.Command);
        Assert.Contains("injected failure", e.Message);
        var buffer = new byte[512];
        await client.ReadAsync(4096, buffer).AsTask().WaitAsync(Limit);
        Assert.Equal(Pattern(4096, 512), buffer);
    }

    [Fact]
    public async Task Block_status_keeps_our_context_clamps_the_last_extent_and_ignores_other_contexts()
    {
        using var server = new ScriptedNbdServer(8 << 20, TransmissionFlags.None, structured: true, async s =>
        {
            var r = await s.ReadRequestAsync();
            Assert.Equal(NbdCommand.BlockStatus, r.Command);
            await s.BlockStatusAsync(r.Cookie, 99, false, (1 << 20, 0));
            await s.BlockStatusAsync(r.Cookie, ScriptedNbdServer.AllocationContext, true, (65536, 0), (131072, 3), (2 << 20, 0));
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var extents = new List<Extent>();
        await client.BlockStatusAsync(0, 1 << 20, extents).AsTask().WaitAsync(Limit);
        Assert.Equal(
            [new Extent(65536, ExtentFlags.Data), new Extent(131072, ExtentFlags.Hole | ExtentFlags.Zero), new Extent((1 << 20) - 196608, ExtentFlags.Data)],
            extents);
    }

    [Fact]
    public async Task A_reply_with_an_unknown_cookie_fails_every_request_in_flight_and_every_later_one()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.None, structured: true, async s =>
        {
            for (int i = 0; i < 3; i++)
                await s.ReadRequestAsync();
            await s.SimpleReplyAsync(0xdeadbeef, NbdError.None, new byte[512]);
            await Task.Delay(TimeSpan.FromSeconds(30));
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var reads = Enumerable.Range(0, 3).Select(i => client.ReadAsync(i * 512L, new byte[512]).AsTask()).ToArray();
        foreach (var read in reads)
            await Assert.ThrowsAsync<NbdProtocolException>(() => read.WaitAsync(Limit));
        await Assert.ThrowsAsync<NbdProtocolException>(() => client.ReadAsync(0, new byte[512]).AsTask().WaitAsync(Limit));
    }

    [Fact]
    public async Task A_server_that_hangs_up_fails_the_requests_in_flight()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.None, structured: true, async s =>
        {
            await s.ReadRequestAsync();
            await s.ReadRequestAsync();
            s.Close();
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var a = client.ReadAsync(0, new byte[512]).AsTask();
        var b = client.ReadAsync(512, new byte[512]).AsTask();
        await Assert.ThrowsAsync<NbdConnectionException>(() => a.WaitAsync(Limit));
        await Assert.ThrowsAsync<NbdConnectionException>(() => b.WaitAsync(Limit));
        await Assert.ThrowsAsync<NbdConnectionException>(() => client.ReadAsync(0, new byte[512]).AsTask().WaitAsync(Limit));
    }

    [Fact]
    public async Task A_server_without_structured_replies_is_used_with_simple_replies_in_any_order()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.None, structured: false, async s =>
        {
            var first = await s.ReadRequestAsync();
            var second = await s.ReadRequestAsync();
            await s.SimpleReplyAsync(second.Cookie, NbdError.None, Pattern(second.Offset, second.Length));
            await s.SimpleReplyAsync(first.Cookie, NbdError.None, Pattern(first.Offset, first.Length));
        });
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        Assert.False(client.StructuredReplies);
        Assert.False(client.SupportsBlockStatus);
        Assert.Throws<NotSupportedException>(() => { _ = client.BlockStatusAsync(0, 4096, new List<Extent>()); });
        var a = new byte[1000];
        var b = new byte[3000];
        await Task.WhenAll(client.ReadAsync(100, a).AsTask(), client.ReadAsync(5000, b).AsTask()).WaitAsync(Limit);
        Assert.Equal(Pattern(100, 1000), a);
        Assert.Equal(Pattern(5000, 3000), b);
    }

    [Fact]
    public async Task Arguments_are_checked_before_anything_is_sent()
    {
        using var server = new ScriptedNbdServer(1 << 20, TransmissionFlags.ReadOnly, structured: true, _ => Task.Delay(TimeSpan.FromSeconds(30)));
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = client.ReadAsync((1 << 20) - 10, new byte[11]); });
        Assert.Throws<InvalidOperationException>(() => { _ = client.WriteAsync(0, new byte[1]); });
        Assert.Throws<NotSupportedException>(() => { _ = client.FlushAsync(); });
    }

    [Fact]
    public async Task Nbdkit_memory_many_concurrent_writes_and_reads_over_four_connections()
    {
        using var server = PeerServer.Nbdkit("memory", "64M");
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri, new NbdBlockClientOptions { Connections = 4 });
        Assert.Equal(4, client.ConnectionCount);
        Assert.True(client.SupportsBlockStatus);
        var blocks = Enumerable.Range(0, 64).Select(i => (Offset: i * 900_000L + 12288, Data: RandomNumberGenerator.GetBytes(200_000))).ToArray();
        await Task.WhenAll(blocks.Select(b => client.WriteAsync(b.Offset, b.Data).AsTask())).WaitAsync(Limit);
        await client.FlushAsync().AsTask().WaitAsync(Limit);
        var back = blocks.Select(b => new byte[b.Data.Length]).ToArray();
        await Task.WhenAll(blocks.Select((b, i) => client.ReadAsync(b.Offset, back[i]).AsTask())).WaitAsync(Limit);
        for (int i = 0; i < blocks.Length; i++)
            Assert.Equal(blocks[i].Data, back[i]);

        // A read larger than one request is split and reassembled.
        var big = new byte[client.MaximumRequestSize + 4096];
        await client.ReadAsync(0, big).AsTask().WaitAsync(Limit);
        Assert.Equal(blocks[0].Data, big.AsSpan(12288, 200_000).ToArray());

        // Zeroes and trim; block status then shows the written region as data and untouched space as a hole.
        await client.WriteZeroesAsync(12288, 4096).AsTask().WaitAsync(Limit);
        await client.TrimAsync(60L << 20, 1 << 20).AsTask().WaitAsync(Limit);
        var z = new byte[4096];
        await client.ReadAsync(12288, z).AsTask().WaitAsync(Limit);
        Assert.All(z, b => Assert.Equal(0, b));
        var extents = new List<Extent>();
        await client.BlockStatusAsync(62L << 20, 1 << 20, extents).AsTask().WaitAsync(Limit);
        Assert.True(extents[0].Flags.HasFlag(ExtentFlags.Hole));
        extents.Clear();
        await client.BlockStatusAsync(blocks[1].Offset, 4096, extents).AsTask().WaitAsync(Limit);
        Assert.Equal(ExtentFlags.Data, extents[0].Flags);
    }

    [Fact]
    public async Task Nbdkit_error_filter_fails_the_read_and_the_connection_carries_on()
    {
        using var server = PeerServer.Nbdkit("--filter=error", "memory", "1M", "error-pread=EIO", "error-pread-rate=100%");
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var e = await Assert.ThrowsAsync<NbdCommandException>(() => client.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Limit));
        Assert.Equal(NbdError.IO, e.Error);
        await client.WriteAsync(0, new byte[4096]).AsTask().WaitAsync(Limit);
    }

    [Fact]
    public async Task Qemu_nbd_without_multi_conn_gets_one_connection_and_reports_block_status()
    {
        using var server = PeerServer.QemuNbd("disk", 16 << 20);
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri, new NbdBlockClientOptions { Connections = 4 });
        Assert.Equal(1, client.ConnectionCount);
        Assert.True(client.SupportsBlockStatus);
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        await client.WriteAsync(4 << 20, data).AsTask().WaitAsync(Limit);
        var back = new byte[data.Length];
        await client.ReadAsync(4 << 20, back).AsTask().WaitAsync(Limit);
        Assert.Equal(data, back);
        var extents = new List<Extent>();
        await client.BlockStatusAsync(0, 16 << 20, extents).AsTask().WaitAsync(Limit);
        Assert.True(extents[0].Flags.HasFlag(ExtentFlags.Zero)); // the first 4 MiB were never written
        Assert.Contains(extents, e => e.Flags == ExtentFlags.Data);
    }

    [Fact]
    public async Task Nbd_server_speaks_simple_replies_only_and_still_pipelines()
    {
        using var server = PeerServer.NbdServer(("disk", 8 << 20));
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri.WithExportName("disk"), new NbdBlockClientOptions { Connections = 2 });
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => client.WriteAsync(i * (1L << 20), data).AsTask())).WaitAsync(Limit);
        var back = Enumerable.Range(0, 8).Select(_ => new byte[data.Length]).ToArray();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => client.ReadAsync(i * (1L << 20), back[i]).AsTask())).WaitAsync(Limit);
        Assert.All(back, b => Assert.Equal(data, b));
    }

    [Fact]
    public async Task Our_server_over_tls_and_a_unix_socket()
    {
        string dir = Directory.CreateTempSubdirectory("nbdps-bc-").FullName;
        try
        {
            using var certs = new TestCertificates(dir);
            await using var server = new TestServer(new NbdServerOptions { Tls = new TlsOptions(certs.Server, TlsMode.Require) });
            server.Add("m", new MemoryBlockStore(8 << 20));
            var options = new NbdBlockClientOptions
            {
                Connections = 2,
                Client = NbdClientOptions.Default with { Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(certs.Authority) } },
            };
            foreach (var uri in new[] { NbdUri.ForTcp("127.0.0.1", server.Port, "m"), NbdUri.ForUnix(server.SocketPath, "m") })
            {
                await using var client = await NbdBlockClient.ConnectAsync(uri, options);
                Assert.True(client.IsTls);
                Assert.Equal(2, client.ConnectionCount);
                var data = RandomNumberGenerator.GetBytes(3 << 20);
                await client.WriteAsync(1 << 20, data).AsTask().WaitAsync(Limit);
                var back = new byte[data.Length];
                await client.ReadAsync(1 << 20, back).AsTask().WaitAsync(Limit);
                Assert.Equal(data, back);
                // The memory store answers unwritten space with hole chunks.
                var hole = Enumerable.Repeat((byte)1, 65536).ToArray();
                await client.ReadAsync(6 << 20, hole).AsTask().WaitAsync(Limit);
                Assert.All(hole, b => Assert.Equal(0, b));
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Killing_the_server_fails_every_request_in_flight_instead_of_hanging()
    {
        using var server = PeerServer.Nbdkit("--filter=delay", "memory", "64M", "delay-read=2");
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri, new NbdBlockClientOptions { Connections = 2 });
        var reads = Enumerable.Range(0, 40).Select(i => client.ReadAsync(i * 65536L, new byte[65536]).AsTask()).ToArray();
        await Task.Delay(300);
        server.Kill();
        foreach (var read in reads)
        {
            var e = await Record.ExceptionAsync(() => read.WaitAsync(Limit));
            Assert.IsType<NbdConnectionException>(e);
        }
    }

    [Fact]
    public async Task Abort_fails_requests_in_flight_at_once()
    {
        using var server = PeerServer.Nbdkit("--filter=delay", "memory", "64M", "delay-read=5");
        var client = await NbdBlockClient.ConnectAsync(server.Uri);
        var read = client.ReadAsync(0, new byte[4096]).AsTask();
        await Task.Delay(200);
        client.Abort();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => read.WaitAsync(TimeSpan.FromSeconds(4)));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.ReadAsync(0, new byte[4096]).AsTask());
        await client.DisposeAsync();
    }
}

/// <summary>
/// A warm client pipelining reads allocates nothing per request (measured process-wide, so run alone, and by
/// tools/test.sh before the kernel-test VMs start: the Measure=Quiet trait).
/// </summary>
[Collection(SerialCollection.Name)]
[Trait("Measure", "Quiet")]
public class NbdBlockClientAllocationTests
{
    [Fact]
    public async Task Pipelined_reads_allocate_almost_nothing_once_warm()
    {
        // Over a Unix socket nbdkit runs without -v: its per-request log lines would be read (and allocated) here.
        using var server = PeerServer.NbdkitUnix("memory", "64M");
        await using var client = await NbdBlockClient.ConnectAsync(server.Uri, new NbdBlockClientOptions { Connections = 2 });
        var buffers = Enumerable.Range(0, 16).Select(_ => new byte[4096]).ToArray();

        async Task Lane(int lane, int count)
        {
            for (int i = 0; i < count; i++)
                await client.ReadAsync(((lane * 997L + i) % 16000) * 4096, buffers[lane]).ConfigureAwait(false);
        }

        // Warm up until tiered compilation is done with the read path (its unoptimised code allocates), then take the
        // best of three rounds.
        await JitWarmup.UntilQuietAsync(() => Task.WhenAll(Enumerable.Range(0, 16).Select(l => Lane(l, 2000))), TimeSpan.FromSeconds(60));
        double best = double.MaxValue;
        for (int round = 0; round < 3; round++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            await Task.WhenAll(Enumerable.Range(0, 16).Select(l => Lane(l, 2000)));
            best = Math.Min(best, (GC.GetTotalAllocatedBytes(precise: true) - before) / 32000.0);
        }
        // The 16 lane state machines amount to a fraction of a byte per request; a real per-request allocation
        // (a Task, a closure, a buffer) would be 40 bytes or more.
        Assert.True(best < 4, $"{best:0.0} bytes allocated per request");
    }
}
