using System.Buffers.Binary;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

/// <summary>
/// Requests the connection's reader runs itself, their replies batched into one send: file reads
/// the page cache answers without waiting (the rest go to workers, so replies come out of order),
/// and every request to a memory store. Many requests are in flight at once, every reply is
/// matched to its request by cookie and checked byte for byte.
/// </summary>
public class InlineRequestTests
{
    public static TheoryData<bool> ReplyModes => new() { false, true };

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task Cached_and_uncached_file_reads_in_flight_together_all_get_their_own_data(bool structured)
    {
        await using var server = new TestServer();
        const int size = 16 << 20;
        string path = Path.Combine(server.Directory, "disk.img");
        var model = new byte[size];
        new Random(21).NextBytes(model);
        File.WriteAllBytes(path, model);
        // Only every other MiB stays in the page cache, so reads elsewhere cannot be answered
        // without waiting (on file systems with RWF_NOWAIT reads; elsewhere every read goes to a
        // worker). The whole file is dropped and half read back: a partial drop can leave large
        // folios that straddle the range in place.
        using (var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Flush(flushToDisk: true); // dirty pages cannot be dropped
            Assert.Equal(0, Libc.PosixFAdvise(f.SafeFileHandle, 0, 0, Libc.POSIX_FADV_DONTNEED));
            var mib = new byte[1 << 20];
            for (int i = 0; i < 16; i += 2)
                RandomAccess.Read(f.SafeFileHandle, mib, (long)i << 20);
        }
        server.Add("f", FileBlockStore.Open(path, readOnly: true));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("f", structured);

        // Sizes from batched ones to larger than a batch (read into a pooled buffer on the reader) and, for
        // structured replies, hole-aware ones (the executor's); half the 1 MiB reads lie in one cached MiB.
        var rng = new Random(4);
        var requests = new List<(int Offset, int Length)>();
        for (int i = 0; i < 400; i++)
        {
            int length = rng.Next(6) switch { 0 => 512, 1 => 4096, 2 => 64 * 1024, 3 => 300 * 1024, 4 => 1 << 20, _ => 5 << 20 };
            int offset = length == 1 << 20 && rng.Next(2) == 0 ? rng.Next(8) << 21 : rng.Next(size - length);
            requests.Add((offset, length));
        }
        PipelineAndCheck(c, structured, requests, model);
    }

    [Fact]
    public async Task A_large_structured_read_of_a_cached_file_still_sends_its_hole_as_OFFSET_HOLE()
    {
        // Cached reads run on the reader as plain data, except structured ones large enough to look for holes.
        await using var server = new TestServer();
        const int mib = 1 << 20;
        string path = Path.Combine(server.Directory, "sparse.img");
        var model = new byte[8 * mib];
        new Random(5).NextBytes(model.AsSpan(0, 2 * mib));
        new Random(6).NextBytes(model.AsSpan(6 * mib));
        using (var f = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            f.SetLength(8 * mib);
            RandomAccess.Write(f.SafeFileHandle, model.AsSpan(0, 2 * mib), 0);
            RandomAccess.Write(f.SafeFileHandle, model.AsSpan(6 * mib), 6 * mib);
            RandomAccess.Read(f.SafeFileHandle, new byte[8 * mib], 0); // every page, holes included, now cached
        }
        server.Add("f", FileBlockStore.Open(path, readOnly: true));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("f", structured: true);

        c.SendRequest(NbdCommand.Read, 0, 8 * mib, cookie: 3);
        var chunks = new List<RawNbdClient.Chunk>();
        do chunks.Add(c.ReadChunk()); while ((chunks[^1].Flags & (ushort)NbdReplyChunkFlags.Done) == 0);
        Assert.Contains(chunks, x => x.Type == NbdReplyChunkType.OffsetHole);
        var back = new byte[8 * mib];
        foreach (var chunk in chunks.Where(x => x.Type == NbdReplyChunkType.OffsetData))
            chunk.Payload.AsSpan(8).CopyTo(back.AsSpan((int)BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload)));
        Assert.True(model.AsSpan().SequenceEqual(back));

        // Below that size the same range is one data chunk.
        c.SendRequest(NbdCommand.Read, mib, 3 * mib, cookie: 4);
        var one = c.ReadChunk();
        Assert.Equal((NbdReplyChunkType.OffsetData, (ushort)NbdReplyChunkFlags.Done), (one.Type, one.Flags));
        Assert.True(model.AsSpan(mib, 3 * mib).SequenceEqual(one.Payload.AsSpan(8)));
    }

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task Memory_writes_and_reads_sent_in_one_burst_are_all_answered(bool structured)
    {
        // Few slots: the reader runs out of them with replies still in its batch, and must send those rather than wait.
        await using var server = new TestServer(new NbdServerOptions { MaxRequestsInFlight = 4 });
        const int size = 4 << 20;
        var store = server.Add("m", new MemoryBlockStore(size));
        var model = new byte[size];
        new Random(8).NextBytes(model.AsSpan(0, size / 2));
        store.Write(0, model.AsSpan(0, size / 2), fua: false); // the upper half stays a hole
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("m", structured);

        // One send of many small writes (their payloads landing in the chunks), then reads across data and holes.
        var burst = new MemoryStream();
        var rng = new Random(2);
        int writes = 0;
        for (int i = 0; i < 200; i++)
        {
            int length = rng.Next(1, 3000);
            int offset = rng.Next(size - length);
            var payload = new byte[length];
            rng.NextBytes(payload);
            payload.CopyTo(model, offset);
            burst.Write(Request(NbdCommand.Write, (ulong)offset, (uint)length, cookie: 1_000_000UL + (ulong)i));
            burst.Write(payload);
            writes++;
        }
        await SendAndCheckWriteReplies(c, burst, writes);
        PipelineAndCheck(c, structured, RandomRanges(rng, 300, 100_000, size), model);
    }

    [Theory]
    [MemberData(nameof(ReplyModes))]
    public async Task File_writes_of_every_size_sent_in_one_burst_land_whole_and_read_back(bool structured)
    {
        // Small writes run on the reader whatever else is in flight, large ones on workers; after a write of
        // 128 KiB or more the reader receives one header at a time. A burst mixes them (and FUA) so the reader
        // switches between the paths with the socket full, and replies come back out of order.
        await using var server = new TestServer(new NbdServerOptions { MaxRequestsInFlight = 8 });
        const int size = 32 << 20;
        string path = Path.Combine(server.Directory, "disk.img");
        var model = new byte[size];
        File.WriteAllBytes(path, model);
        server.Add("f", FileBlockStore.Open(path, readOnly: false));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("f", structured);

        // Writes in flight together must not overlap (their order is not defined): each gets its own range.
        var burst = new MemoryStream();
        var rng = new Random(17);
        int writes = 0, at = 0;
        while (true)
        {
            int length = rng.Next(6) switch { 0 => 512, 1 => 4096, 2 => 32 * 1024, 3 => 128 * 1024, 4 => 200_000, _ => 1 << 20 };
            int offset = at + rng.Next(4096);
            if (offset + length > size)
                break;
            at = offset + length;
            var payload = new byte[length];
            rng.NextBytes(payload);
            payload.CopyTo(model, offset);
            var header = Request(NbdCommand.Write, (ulong)offset, (uint)length, cookie: 1_000_000UL + (ulong)writes);
            if (rng.Next(5) == 0)
                BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), (ushort)NbdCommandFlags.Fua);
            burst.Write(header);
            burst.Write(payload);
            writes++;
        }
        await SendAndCheckWriteReplies(c, burst, writes);
        PipelineAndCheck(c, structured, RandomRanges(rng, 200, 300_000, size), model);
        c.SendRequest(NbdCommand.Flush, 0, 0, cookie: 7);
        Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
        Assert.Equal(model, File.ReadAllBytes(path));
    }

    [Fact]
    public void A_file_store_reads_from_the_page_cache_without_waiting_and_declines_what_is_not_cached()
    {
        using var dir = new Storage.ScratchDirectory();
        string path = dir.File("disk.img");
        var data = new byte[4 << 20];
        new Random(6).NextBytes(data);
        File.WriteAllBytes(path, data);
        using var store = FileBlockStore.Open(path, readOnly: false);
        var cached = (IPageCacheStore)store;
        var buffer = new byte[1 << 20];

        // Just written, so in the page cache.
        if (!cached.TryReadCached(0, buffer))
        {
            // tmpfs and overlayfs refuse RWF_NOWAIT reads: then the store declines every read, and
            // all of them go to workers (the blocking path every other test covers).
            Assert.False(cached.TryReadCached(1 << 20, buffer));
            return;
        }
        Assert.True(data.AsSpan(0, 1 << 20).SequenceEqual(buffer));

        // Written back, then dropped: the whole file, as a partial drop can leave large folios
        // that straddle the range in place; mincore confirms the drop.
        store.Flush();
        PageCacheProbe.Drop(path);
        // A no-wait read of pages that are not cached still starts their readahead, and when the
        // thread is held up after that (a loaded machine, a metadata read) the data can arrive
        // before the kernel looks again: the call then returns it without having waited for it.
        // Only a call that read nothing from storage itself is evidence either way: it must decline.
        // One that did read (the thread's block-input count rose) and got the data proves nothing:
        // drop the pages again and repeat.
        bool declined = false;
        for (int attempt = 0; attempt < 10 && !declined; attempt++)
        {
            if (attempt > 0)
                PageCacheProbe.Drop(path);
            long blocksBefore = PageCacheProbe.ThreadBlocksRead();
            declined = !cached.TryReadCached(2 << 20, buffer);
            if (!declined)
            {
                Assert.True(PageCacheProbe.ThreadBlocksRead() > blocksBefore,
                    "a read of pages just dropped from the cache (mincore: none resident) did not decline, and read nothing from storage");
                Assert.True(data.AsSpan(2 << 20, 1 << 20).SequenceEqual(buffer));
            }
        }
        Assert.True(declined, "in ten tries every no-wait read of dropped pages got its readahead back within the call");
        PageCacheProbe.Drop(path);
        // The blocking read brings them back; now they are answered without waiting.
        store.Read(2 << 20, buffer);
        Assert.True(data.AsSpan(2 << 20, 1 << 20).SequenceEqual(buffer));
        Array.Clear(buffer);
        Assert.True(cached.TryReadCached(2 << 20, buffer));
        Assert.True(data.AsSpan(2 << 20, 1 << 20).SequenceEqual(buffer));

        // Past the end of a file that shrank: zeroes, as the blocking read gives.
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write))
            f.SetLength((4 << 20) - 1000);
        var tail = new byte[4096];
        store.Read((4 << 20) - 4096, tail); // back into the page cache (the drop above took the whole file)
        tail.AsSpan().Fill(0xEE);
        Assert.True(cached.TryReadCached((4 << 20) - 4096, tail));
        Assert.True(data.AsSpan((4 << 20) - 4096, 3096).SequenceEqual(tail.AsSpan(0, 3096)));
        Assert.True(tail.AsSpan(3096).IndexOfAnyExcept((byte)0) < 0);
    }

    /// <summary>Sends the burst of WRITEs (cookies from 1,000,000 up) while reading a successful reply for each, once.</summary>
    private static async Task SendAndCheckWriteReplies(RawNbdClient c, MemoryStream burst, int writes)
    {
        var sender = Task.Run(() => c.Send(burst.ToArray()));
        var cookies = new HashSet<ulong>();
        for (int i = 0; i < writes; i++)
        {
            var (error, cookie, _) = c.ReadSimpleReply();
            Assert.Equal(NbdError.None, error);
            Assert.InRange(cookie, 1_000_000UL, 1_000_000UL + (ulong)writes - 1);
            Assert.True(cookies.Add(cookie), $"two replies for cookie {cookie}");
        }
        await sender;
    }

    private static List<(int Offset, int Length)> RandomRanges(Random rng, int count, int maxLength, int size)
    {
        var ranges = new List<(int Offset, int Length)>();
        for (int i = 0; i < count; i++)
        {
            int length = rng.Next(1, maxLength);
            ranges.Add((rng.Next(size - length), length));
        }
        return ranges;
    }

    /// <summary>
    /// Sends every read at once (from another thread, as a real client would), reads the replies in
    /// whatever order they come, and checks each against the model by its cookie.
    /// </summary>
    private static void PipelineAndCheck(RawNbdClient c, bool structured, List<(int Offset, int Length)> reads, byte[] model)
    {
        var burst = new MemoryStream();
        for (int i = 0; i < reads.Count; i++)
            burst.Write(Request(NbdCommand.Read, (ulong)reads[i].Offset, (uint)reads[i].Length, (ulong)i));
        var sender = Task.Run(() => c.Send(burst.ToArray()));
        var data = new byte[reads.Count][];
        var done = new bool[reads.Count];
        int answered = 0;
        while (answered < reads.Count)
        {
            var chunk = c.ReadChunk();
            Assert.InRange(chunk.Cookie, 0UL, (ulong)reads.Count - 1);
            int i = (int)chunk.Cookie;
            Assert.False(done[i], $"request {i} answered twice");
            var (offset, length) = reads[i];
            data[i] ??= new byte[length];
            switch (chunk.Type)
            {
                case NbdReplyChunkType.None: // a simple reply: the data follows
                    Assert.Equal(NbdError.None, (NbdError)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload));
                    data[i] = c.ReadExactly(length);
                    break;
                case NbdReplyChunkType.OffsetData:
                    int at = (int)(BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload) - (ulong)offset);
                    chunk.Payload.AsSpan(8).CopyTo(data[i].AsSpan(at));
                    break;
                case NbdReplyChunkType.OffsetHole:
                    int from = (int)(BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload) - (ulong)offset);
                    data[i].AsSpan(from, (int)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload.AsSpan(8))).Clear();
                    break;
                default:
                    Assert.Fail($"request {i}: unexpected {chunk.Type} chunk");
                    break;
            }
            if ((chunk.Flags & (ushort)NbdReplyChunkFlags.Done) != 0)
            {
                done[i] = true;
                answered++;
                Assert.True(model.AsSpan(offset, length).SequenceEqual(data[i]), $"read {i} of {length} at {offset} differs");
            }
        }
        sender.Wait();
    }

    private static byte[] Request(NbdCommand command, ulong offset, uint length, ulong cookie)
    {
        var h = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), length);
        return h;
    }
}
