using NbdPowerShell.Engine.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Storage;

public class MemoryBlockStoreTests
{
    private const int Chunk = 65536;

    [Fact]
    public void Unwritten_store_reads_zeroes()
    {
        using var store = new MemoryBlockStore(10 * Chunk + 123);
        var buffer = new byte[3 * Chunk + 77];
        Array.Fill(buffer, (byte)0xAA);
        store.Read(Chunk - 13, buffer);
        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Equal(0, store.AllocatedBytes);
    }

    [Fact]
    public void Writes_at_odd_offsets_across_chunks_read_back()
    {
        const int size = 8 * Chunk;
        using var store = new MemoryBlockStore(size);
        var model = new byte[size];
        var rng = new Random(1);
        foreach (var (offset, length) in new[] { (Chunk - 7, 19), (3 * Chunk - 1001, 2 * Chunk + 2003), (5, 1), (size - 3, 3) })
        {
            var data = new byte[length];
            rng.NextBytes(data);
            store.Write(offset, data, fua: false);
            data.CopyTo(model, offset);
        }
        var all = new byte[size];
        store.Read(0, all);
        Assert.Equal(model, all);

        var part = new byte[Chunk + 3];
        store.Read(3 * Chunk - 1002, part);
        Assert.Equal(model.AsSpan(3 * Chunk - 1002, Chunk + 3).ToArray(), part);
    }

    [Fact]
    public void Trim_frees_covered_chunks_and_zeroes_partial_ones()
    {
        const int size = 4 * Chunk;
        using var store = new MemoryBlockStore(size);
        var ones = Enumerable.Repeat((byte)1, size).ToArray();
        store.Write(0, ones, fua: false);
        Assert.Equal(size, store.AllocatedBytes);

        store.Trim(Chunk / 2, 2 * Chunk, fua: false); // Half of chunk 0, all of chunk 1, half of chunk 2.

        Assert.Equal(3 * Chunk, store.AllocatedBytes);
        var all = new byte[size];
        store.Read(0, all);
        for (int i = 0; i < size; i++)
            Assert.Equal(i >= Chunk / 2 && i < Chunk / 2 + 2 * Chunk ? 0 : 1, all[i]);
    }

    [Fact]
    public void WriteZeroes_without_punch_keeps_chunks_allocated()
    {
        const int size = 3 * Chunk;
        using var store = new MemoryBlockStore(size);
        store.Write(0, Enumerable.Repeat((byte)7, size).ToArray(), fua: false);

        store.WriteZeroes(10, size - 20, mayPunch: false, fastOnly: true, fua: true);

        Assert.Equal(size, store.AllocatedBytes);
        var all = new byte[size];
        store.Read(0, all);
        Assert.Equal(7, all[9]);
        Assert.Equal(0, all[10]);
        Assert.Equal(0, all[size - 11]);
        Assert.Equal(7, all[size - 10]);
        Assert.Equal(size - 20, all.Count(b => b == 0));

        store.WriteZeroes(0, size, mayPunch: true, fastOnly: false, fua: false);
        Assert.Equal(0, store.AllocatedBytes);
    }

    [Fact]
    public void Extents_merge_runs_of_holes_and_data()
    {
        using var store = new MemoryBlockStore(10 * Chunk + 100);
        store.Write(2 * Chunk + 5, new byte[] { 1 }, fua: false);
        store.Write(3 * Chunk, new byte[] { 1 }, fua: false);
        store.Write(10 * Chunk + 1, new byte[] { 1 }, fua: false);

        var extents = new List<Extent>();
        store.GetExtents(100, store.Size - 100, extents, 100);

        var hole = ExtentFlags.Hole | ExtentFlags.Zero;
        Assert.Equal(
            new[]
            {
                new Extent(2 * Chunk - 100, hole),
                new Extent(2 * Chunk, ExtentFlags.Data),
                new Extent(6 * Chunk, hole),
                new Extent(100, ExtentFlags.Data),
            },
            extents);
    }

    [Fact]
    public void Extents_respect_max_count_and_start_at_offset()
    {
        using var store = new MemoryBlockStore(6 * Chunk);
        store.Write(Chunk, new byte[] { 1 }, fua: false);
        store.Write(3 * Chunk, new byte[] { 1 }, fua: false);

        var extents = new List<Extent>();
        store.GetExtents(Chunk + 10, 5 * Chunk - 10, extents, 2);

        Assert.Equal(new[] { new Extent(Chunk - 10, ExtentFlags.Data), new Extent(Chunk, ExtentFlags.Hole | ExtentFlags.Zero) }, extents);
    }

    [Fact]
    public void One_TiB_store_costs_almost_nothing_until_written()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        using var store = new MemoryBlockStore(1L << 40);
        store.Write((1L << 40) - 1, new byte[] { 42 }, fua: false);
        var one = new byte[1];
        store.Read((1L << 40) - 1, one);
        var extents = new List<Extent>();
        store.GetExtents(0, store.Size, extents, 16);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(42, one[0]);
        Assert.True(allocated < 1 << 20, $"allocated {allocated} bytes for a 1 TiB store with one byte written");
        Assert.Equal(new[] { new Extent((1L << 40) - Chunk, ExtentFlags.Hole | ExtentFlags.Zero), new Extent(Chunk, ExtentFlags.Data) }, extents);
    }

    [Fact]
    public void Concurrent_writers_in_one_chunk_lose_nothing()
    {
        const int chunks = 256, piece = 512, threads = 4;
        using var store = new MemoryBlockStore(chunks * Chunk);
        // Every thread writes its share of the 512-byte pieces of each chunk in turn, so all
        // threads reach each chunk's first write (its allocation) together.
        using var start = new Barrier(threads);
        var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            var data = new byte[piece];
            start.SignalAndWait();
            for (int c = 0; c < chunks; c++)
            {
                for (int p = t; p < Chunk / piece; p += threads)
                {
                    Array.Fill(data, (byte)(p + 1));
                    store.Write((long)c * Chunk + p * piece, data, fua: false);
                }
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());

        var all = new byte[chunks * Chunk];
        store.Read(0, all);
        for (int i = 0; i < all.Length; i++)
        {
            byte expected = (byte)(i % Chunk / piece + 1);
            if (all[i] != expected)
                Assert.Fail($"byte {i} is {all[i]}, expected {expected}");
        }
    }

    [Fact]
    public void Too_large_size_is_rejected() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryBlockStore(MemoryBlockStore.MaxSize + 1));
}
