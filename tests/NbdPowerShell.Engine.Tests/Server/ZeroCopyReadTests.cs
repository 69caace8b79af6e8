using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

/// <summary>
/// The data paths without a user-space copy: memory reads sent as iovecs over the store's pinned
/// chunks (and writes received into them), file reads spliced from the page cache (forced here: by default only remote peers get them). Every read is checked
/// byte for byte against a model, in both reply modes.
/// </summary>
public class ZeroCopyReadTests
{
    private const int Chunk = 64 * 1024;

    public static TheoryData<bool> ReplyModes => new() { false, true };

    private static readonly NbdServerOptions Spliced = new() { FileReadSplicing = FileReadSplicing.Always };

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task Memory_reads_across_chunk_boundaries_and_holes_match_the_model(bool structured)
    {
        const int size = 80 << 20;
        await using var server = new TestServer();
        var store = server.Add("m", new MemoryBlockStore(size));
        var model = new byte[size];
        var rng = new Random(11);
        // Data in some chunks only, starting and ending mid-chunk, so reads meet data, holes and both.
        foreach (var (offset, length) in new[] { (Chunk - 100, 300), (5 * Chunk + 17, 3 * Chunk), (40 << 20, 5 << 20), (size - 5000, 5000) })
        {
            var data = new byte[length];
            rng.NextBytes(data);
            store.Write(offset, data, fua: false);
            data.CopyTo(model, offset);
        }
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("m", structured);
        ulong cookie = 1;
        foreach (var (offset, length) in new[]
                 {
                     (Chunk - 10, 20),                 // across one boundary
                     (Chunk - 200, 2 * Chunk + 400),   // data, hole, hole
                     (4 * Chunk, 6 * Chunk),           // hole, data over three chunks, hole
                     (size - 6000, 6000),              // up to the end of the export
                     (32 * 1024, 64 << 20),            // 64 MiB: 1025 chunks, more than one sendmsg's IOV_MAX
                     (40 << 20, 1 << 20),              // all data
                     (20 << 20, 1 << 20),              // all hole
                 })
        {
            c.SendRequest(NbdCommand.Read, (ulong)offset, (uint)length, cookie);
            var r = c.ReadRead(structured, (ulong)offset, length);
            Assert.Equal((NbdError.None, cookie), (r.Error, r.Cookie));
            Assert.True(model.AsSpan(offset, length).SequenceEqual(r.Data), $"read of {length} at {offset} differs from what was written");
            cookie++;
        }
    }

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task Memory_writes_received_into_chunks_read_back_over_every_transport_path(bool structured)
    {
        const int size = 4 << 20;
        await using var server = new TestServer();
        var store = server.Add("m", new MemoryBlockStore(size));
        var model = new byte[size];
        var rng = new Random(5);
        using var c = RawNbdClient.ConnectUnix(server.SocketPath);
        c.Go("m", structured);
        ulong cookie = 1;
        foreach (var (offset, length) in new[] { (3, 5), (Chunk - 1, 2), (Chunk * 2 + 9, 3 * Chunk), (size - Chunk - 1, Chunk + 1) })
        {
            var data = new byte[length];
            rng.NextBytes(data);
            c.SendRequest(NbdCommand.Write, (ulong)offset, (uint)length, cookie, payload: data);
            Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
            data.CopyTo(model, offset);
            cookie++;
        }
        // The store itself holds the bytes (they went straight into its chunks).
        var all = new byte[size];
        store.Read(0, all);
        Assert.Equal(model, all);
        c.SendRequest(NbdCommand.Read, 0, size, cookie);
        Assert.True(model.AsSpan().SequenceEqual(c.ReadRead(structured, 0, size).Data));
    }

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task Spliced_file_reads_cover_holes_the_end_of_the_export_and_a_file_that_shrank(bool structured)
    {
        await using var server = new TestServer(Spliced);
        string path = Path.Combine(server.Directory, "disk.img");
        const int size = 12 << 20;
        var model = new byte[size];
        var rng = new Random(3);
        using (var f = new FileStream(path, FileMode.CreateNew))
        {
            f.SetLength(size);
            // Data at the start, a hole of several MiB, data up to the end.
            foreach (var (offset, length) in new[] { (0, 3 << 20), (size - (2 << 20) - 123, (2 << 20) + 123) })
            {
                var data = new byte[length];
                rng.NextBytes(data);
                f.Position = offset;
                f.Write(data);
                data.CopyTo(model, offset);
            }
        }
        server.Add("f", FileBlockStore.Open(path, readOnly: false));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("f", structured);
        ulong cookie = 1;
        void ReadAndCompare(int offset, int length)
        {
            c.SendRequest(NbdCommand.Read, (ulong)offset, (uint)length, cookie);
            var r = c.ReadRead(structured, (ulong)offset, length);
            Assert.Equal((NbdError.None, cookie), (r.Error, r.Cookie));
            Assert.True(model.AsSpan(offset, length).SequenceEqual(r.Data), $"read of {length} at {offset} differs");
            cookie++;
        }
        ReadAndCompare(0, 1 << 20);                      // spliced, data
        ReadAndCompare((3 << 20) - 5000, 200_000);       // data into the hole
        ReadAndCompare(2 << 20, 8 << 20);                // 8 MiB: structured sends OFFSET_HOLE for the hole
        ReadAndCompare(size - 100_000, 100_000);         // ends exactly at the end of the export
        ReadAndCompare(size - 4096, 4096);               // small: the copying path
        ReadAndCompare(12345, 3 << 20);                  // starts mid-page: more bytes than a full pipe's pages hold
        ReadAndCompare(size - (64 << 10), 64 << 10);     // exactly the splice threshold, at the end

        // The file shrinks under the export: what is past its new end reads as zeroes (splice
        // returns 0 there and the rest is filled in), and the connection stays in sync.
        using (var f = new FileStream(path, FileMode.Open))
            f.SetLength(size - (1 << 20));
        model.AsSpan(size - (1 << 20)).Clear();
        ReadAndCompare(size - (2 << 20), 2 << 20);
        ReadAndCompare(0, 4096);
    }

    [Fact]
    public async Task Trim_racing_large_reads_of_the_same_chunks_yields_old_data_or_zeroes_never_garbage()
    {
        const int size = 8 << 20;
        const byte pattern = 0xA7;
        await using var server = new TestServer();
        var store = server.Add("m", new MemoryBlockStore(size));
        var fill = new byte[size];
        Array.Fill(fill, pattern);
        store.Write(0, fill, fua: false);

        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(4));
        int trims = 0;
        var trimmer = Task.Run(() =>
        {
            using var t = RawNbdClient.Connect(server.TcpEndPoint);
            t.Go("m");
            ulong cookie = 1;
            while (!stop.IsCancellationRequested)
            {
                // Drop every chunk, then put the pattern back; collections reclaim dropped chunks meanwhile.
                t.SendRequest(NbdCommand.Trim, 0, size, cookie++);
                Assert.Equal(NbdError.None, t.ReadSimpleReply().Error);
                GC.Collect();
                t.SendRequest(NbdCommand.Write, 0, size, cookie++, payload: fill);
                Assert.Equal(NbdError.None, t.ReadSimpleReply().Error);
                trims++;
            }
        });
        int reads = 0;
        foreach (bool structured in new[] { false, true })
        {
            using var c = RawNbdClient.Connect(server.TcpEndPoint);
            c.Go("m", structured);
            ulong cookie = 1;
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(1.5);
            while (DateTime.UtcNow < until)
            {
                // One large read (one gather send of many chunks), then small ones in flight together
                // (their replies batched: the batch holds the chunks until its send).
                c.SendRequest(NbdCommand.Read, 0, size, cookie);
                Check(c.ReadRead(structured, 0, size));
                for (int i = 0; i < 32; i++)
                    c.SendRequest(NbdCommand.Read, (ulong)i * Chunk, Chunk, cookie + 1 + (ulong)i);
                for (int i = 0; i < 32; i++)
                    Check(c.ReadRead(structured, (ulong)i * Chunk, Chunk)); // in order: the reader runs them and batches the replies in order
                reads++;
                cookie += 33;
            }
            void Check((NbdError Error, ulong Cookie, byte[] Data) r)
            {
                Assert.Equal(NbdError.None, r.Error);
                int bad = r.Data.AsSpan().IndexOfAnyExcept(pattern, (byte)0);
                Assert.True(bad < 0, $"byte {bad} of a read racing trims is 0x{(bad < 0 ? 0 : r.Data[bad]):x2}: neither the old data nor zero");
            }
        }
        stop.Cancel();
        await trimmer;
        Assert.True(trims > 0 && reads > 0, $"the race did not happen: {trims} trims, {reads} reads");
    }

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task A_non_blocking_socket_with_a_tiny_send_buffer_and_a_slow_reader_gets_every_byte(bool structured)
    {
        // Partial sends and EAGAIN from splice and sendmsg: the server end is non-blocking with a
        // small send buffer, and the client pauses before it reads. (Smaller buffers than these
        // make TCP itself crawl through zero-window probes, whatever the sender does.)
        await using var server = new TestServer(Spliced);
        const int size = 8 << 20;
        string path = Path.Combine(server.Directory, "disk.img");
        var fileData = new byte[size];
        new Random(9).NextBytes(fileData);
        File.WriteAllBytes(path, fileData);
        server.Add("f", FileBlockStore.Open(path, readOnly: true));
        var memory = server.Add("m", new MemoryBlockStore(size));
        memory.Write(0, fileData, fua: false);

        foreach (string export in new[] { "f", "m" })
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            client.ReceiveBufferSize = 64 * 1024;
            client.Connect(listener.LocalEndPoint!);
            var serverEnd = listener.Accept();
            serverEnd.SendBufferSize = 16 * 1024;
            // One asynchronous operation makes .NET put the descriptor in non-blocking mode (and
            // emulate blocking for its own synchronous calls), as it does for any socket used both ways.
            await serverEnd.SendAsync(ReadOnlyMemory<byte>.Empty, SocketFlags.None);
            var serving = server.Server.ServeConnectedSocket(serverEnd);
            Assert.True((Libc.Fcntl((int)serverEnd.Handle, Libc.F_GETFL, 0) & Libc.O_NONBLOCK) != 0, "the server end is not non-blocking");

            using var c = RawNbdClient.Wrap(client);
            c.Go(export, structured);
            foreach (var (offset, length) in new[] { (0, size), (12345, 3 << 20), (size - 70_000, 70_000) })
            {
                c.SendRequest(NbdCommand.Read, (ulong)offset, (uint)length, 7);
                Thread.Sleep(50); // let the send buffer fill while nobody reads
                var r = c.ReadRead(structured, (ulong)offset, length);
                Assert.Equal(NbdError.None, r.Error);
                Assert.True(fileData.AsSpan(offset, length).SequenceEqual(r.Data), $"{export}: read of {length} at {offset} differs");
            }
            c.SendRequest(NbdCommand.Disconnect, 0, 0);
            Assert.True(c.WaitForClose());
            await serving.WaitAsync(TimeSpan.FromSeconds(10));
        }
    }
}
