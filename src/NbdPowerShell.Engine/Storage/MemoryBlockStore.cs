namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A sparse in-memory disk: a two-level table of 64 KiB chunks where leaves and chunks are
/// allocated on first write, so an untouched 1 TiB store costs one 32 KiB top-level array.
/// Lock-free: slots are filled with CompareExchange and a chunk that holds data is never
/// replaced, so concurrent writers to different bytes of one chunk all land in the same array.
/// A chunk is only dropped when a trim or write-zeroes covers all of it, and any request that
/// could race with that overlaps it, which the protocol leaves unordered anyway.
/// Chunks are allocated on the pinned object heap so the server can point the kernel at them
/// (vectored sends, receives straight into them); the garbage collector is what frees a dropped
/// chunk, so one that a send still references stays valid until that send is done.
/// </summary>
public sealed class MemoryBlockStore : IBlockStore, IPinnedMemoryStore
{
    private const int ChunkShift = 16;                 // 64 KiB chunks.
    private const int ChunkSize = 1 << ChunkShift;
    private const int LeafShift = 12;                  // 4096 chunks (256 MiB) per leaf; a leaf is 32 KiB.
    private const int LeafEntries = 1 << LeafShift;
    private const long LeafSpan = (long)ChunkSize << LeafShift;

    /// <summary>Keeps the top-level table at or under 4 Mi entries (32 MiB).</summary>
    public const long MaxSize = LeafSpan << 22;        // 1 PiB.

    private readonly byte[]?[]?[] _leaves;

    public MemoryBlockStore(long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, MaxSize);
        Size = size;
        _leaves = new byte[]?[]?[(size + LeafSpan - 1) / LeafSpan];
    }

    public long Size { get; }

    // Memory is as durable as this store gets, so Flush and FUA are free and honest.
    public StoreCapabilities Capabilities =>
        StoreCapabilities.Write | StoreCapabilities.Flush | StoreCapabilities.Fua | StoreCapabilities.Trim |
        StoreCapabilities.WriteZeroes | StoreCapabilities.FastZero | StoreCapabilities.Extents |
        StoreCapabilities.Cache | StoreCapabilities.MultiConnCoherent | StoreCapabilities.NonBlocking;

    public string Description => "memory";

    /// <summary>Bytes held in allocated chunks (excluding the page tables).</summary>
    public long AllocatedBytes
    {
        get
        {
            long chunks = 0;
            foreach (var leaf in _leaves)
            {
                if (leaf is null)
                    continue;
                for (int i = 0; i < leaf.Length; i++)
                {
                    if (Volatile.Read(ref leaf[i]) is not null)
                        chunks++;
                }
            }
            return chunks * ChunkSize;
        }
    }

    public void Read(long offset, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int inChunk = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(destination.Length, ChunkSize - inChunk);
            var chunk = FindChunk(offset);
            if (chunk is null)
                destination[..n].Clear();
            else
                chunk.AsSpan(inChunk, n).CopyTo(destination);
            offset += n;
            destination = destination[n..];
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> source, bool fua)
    {
        while (!source.IsEmpty)
        {
            int inChunk = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(source.Length, ChunkSize - inChunk);
            source[..n].CopyTo(GetOrAddChunk(offset).AsSpan(inChunk, n));
            offset += n;
            source = source[n..];
        }
    }

    void IPinnedMemoryStore.GetReadSegments(long offset, int length, List<MemorySegment> segments)
    {
        while (length > 0)
        {
            int inChunk = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(length, ChunkSize - inChunk);
            var chunk = FindChunk(offset);
            segments.Add(new MemorySegment(chunk, chunk is null ? 0 : inChunk, n));
            offset += n;
            length -= n;
        }
    }

    void IPinnedMemoryStore.GetWriteSegments(long offset, int length, List<MemorySegment> segments)
    {
        while (length > 0)
        {
            int inChunk = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(length, ChunkSize - inChunk);
            segments.Add(new MemorySegment(GetOrAddChunk(offset), inChunk, n));
            offset += n;
            length -= n;
        }
    }

    public void Flush()
    {
    }

    public void Trim(long offset, long length, bool fua) => Zero(offset, length, mayFree: true);

    /// <summary>
    /// Without <paramref name="mayPunch"/> allocated chunks are cleared in place and stay allocated;
    /// chunks never written already read as zeroes and are left unallocated rather than costing memory.
    /// </summary>
    public void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua) =>
        Zero(offset, length, mayFree: mayPunch);

    public void Cache(long offset, long length)
    {
    }

    public void GetExtents(long offset, long length, List<Extent> extents, int maxExtents)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExtents);
        long end = Math.Min(offset + length, Size);
        int added = 0;
        long runStart = offset;
        bool runAllocated = false;
        long pos = offset;
        while (pos < end)
        {
            // Whole unallocated leaves are skipped in one step, so an empty 1 TiB store is cheap to scan.
            var leaf = Volatile.Read(ref _leaves[pos / LeafSpan]);
            long step = leaf is null
                ? LeafSpan - pos % LeafSpan
                : ChunkSize - (pos & (ChunkSize - 1));
            bool allocated = leaf is not null && Volatile.Read(ref leaf[(pos / ChunkSize) & (LeafEntries - 1)]) is not null;
            if (pos > runStart && allocated != runAllocated)
            {
                extents.Add(new Extent(pos - runStart, FlagsFor(runAllocated)));
                if (++added == maxExtents)
                    return;
                runStart = pos;
            }
            runAllocated = allocated;
            pos = Math.Min(pos + step, end);
        }
        if (end > runStart)
            extents.Add(new Extent(end - runStart, FlagsFor(runAllocated)));
    }

    public void Dispose()
    {
    }

    private static ExtentFlags FlagsFor(bool allocated) =>
        allocated ? ExtentFlags.Data : ExtentFlags.Hole | ExtentFlags.Zero;

    private byte[]? FindChunk(long offset)
    {
        var leaf = Volatile.Read(ref _leaves[offset / LeafSpan]);
        return leaf is null ? null : Volatile.Read(ref leaf[(offset >> ChunkShift) & (LeafEntries - 1)]);
    }

    private byte[] GetOrAddChunk(long offset)
    {
        ref var leafSlot = ref _leaves[offset / LeafSpan];
        var leaf = Volatile.Read(ref leafSlot)
            ?? Interlocked.CompareExchange(ref leafSlot, new byte[]?[LeafEntries], null)
            ?? Volatile.Read(ref leafSlot)!;
        ref var chunkSlot = ref leaf[(offset >> ChunkShift) & (LeafEntries - 1)];
        return Volatile.Read(ref chunkSlot)
            ?? Interlocked.CompareExchange(ref chunkSlot, GC.AllocateArray<byte>(ChunkSize, pinned: true), null)
            ?? Volatile.Read(ref chunkSlot)!;
    }

    private void Zero(long offset, long length, bool mayFree)
    {
        long end = offset + length;
        while (offset < end)
        {
            var leaf = Volatile.Read(ref _leaves[offset / LeafSpan]);
            if (leaf is null)
            {
                offset = Math.Min((offset / LeafSpan + 1) * LeafSpan, end); // Nothing stored here.
                continue;
            }
            int inChunk = (int)(offset & (ChunkSize - 1));
            int n = (int)Math.Min(end - offset, ChunkSize - inChunk);
            ref var slot = ref leaf[(offset >> ChunkShift) & (LeafEntries - 1)];
            var chunk = Volatile.Read(ref slot);
            if (chunk is not null)
            {
                if (mayFree && n == ChunkSize)
                    Volatile.Write(ref slot, null);
                else
                    chunk.AsSpan(inChunk, n).Clear();
            }
            offset += n;
        }
    }
}
