using System.Buffers;
using System.Numerics;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// Serves a base store read-write without ever modifying it: changed blocks live in an overlay
/// store of the same size, and a bitmap (one bit per block, set with Interlocked.Or after the
/// overlay holds the whole block) says which store holds each block. A write that covers only
/// part of a block first copies the block up from the base under a striped lock, so two
/// non-overlapping partial writes to one block cannot undo each other's copy-up.
/// </summary>
public sealed class CopyOnWriteBlockStore : IBlockStore
{
    private const int LockStripes = 256;

    private readonly IBlockStore _base;
    private readonly IBlockStore _overlay;
    private readonly bool _ownsBase;
    private readonly int _blockShift;
    private readonly long[] _present;
    private readonly object[] _stripes;

    /// <param name="baseStore">Read only: never written, trimmed or flushed through this store.</param>
    /// <param name="overlay">Receives every change; at least as large as the base, and disposed with this store.</param>
    /// <param name="blockSize">Copy-up granularity: a power of two from 512 bytes to 16 MiB.</param>
    /// <param name="ownsBase">Dispose the base store too.</param>
    public CopyOnWriteBlockStore(IBlockStore baseStore, IBlockStore overlay, int blockSize = 65536, bool ownsBase = false)
    {
        ArgumentNullException.ThrowIfNull(baseStore);
        ArgumentNullException.ThrowIfNull(overlay);
        if (blockSize < 512 || blockSize > 1 << 24 || !BitOperations.IsPow2(blockSize))
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "The block size must be a power of two from 512 bytes to 16 MiB.");
        if (overlay.Size < baseStore.Size)
            throw new ArgumentException($"The overlay ({overlay.Size} bytes) is smaller than the base ({baseStore.Size} bytes).", nameof(overlay));
        if (!overlay.Capabilities.HasFlag(StoreCapabilities.Write))
            throw new ArgumentException($"The overlay {overlay.Description} is not writable.", nameof(overlay));

        long blocks = (baseStore.Size + blockSize - 1) / blockSize;
        long words = (blocks + 63) / 64;
        if (words > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "Too many blocks for the bitmap; use a larger block size.");

        _base = baseStore;
        _overlay = overlay;
        _ownsBase = ownsBase;
        BlockSize = blockSize;
        _blockShift = BitOperations.Log2((uint)blockSize);
        _present = new long[words];
        _stripes = new object[LockStripes];
        for (int i = 0; i < LockStripes; i++)
            _stripes[i] = new object();

        Capabilities = StoreCapabilities.Write | StoreCapabilities.Flush | StoreCapabilities.Fua | StoreCapabilities.Trim |
            StoreCapabilities.WriteZeroes | StoreCapabilities.Extents | StoreCapabilities.Cache |
            StoreCapabilities.MultiConnCoherent | (overlay.Capabilities & StoreCapabilities.FastZero);
    }

    /// <summary>Keeps changes in memory (sparse: only changed blocks cost memory).</summary>
    public static CopyOnWriteBlockStore WithMemoryOverlay(IBlockStore baseStore, int blockSize = 65536, bool ownsBase = false)
    {
        ArgumentNullException.ThrowIfNull(baseStore);
        var overlay = new MemoryBlockStore(baseStore.Size);
        return new CopyOnWriteBlockStore(baseStore, overlay, blockSize, ownsBase);
    }

    /// <summary>
    /// Keeps changes in an unnamed sparse file in <paramref name="directory"/> (default: the
    /// system temp directory) that disappears when the store is disposed.
    /// </summary>
    public static CopyOnWriteBlockStore WithTemporaryFileOverlay(IBlockStore baseStore, string? directory = null,
        int blockSize = 65536, bool ownsBase = false)
    {
        ArgumentNullException.ThrowIfNull(baseStore);
        var overlay = FileBlockStore.CreateTemporary(directory ?? Path.GetTempPath(), baseStore.Size);
        try
        {
            return new CopyOnWriteBlockStore(baseStore, overlay, blockSize, ownsBase);
        }
        catch
        {
            overlay.Dispose();
            throw;
        }
    }

    public long Size => _base.Size;

    public StoreCapabilities Capabilities { get; }

    public string Description => "cow:" + _base.Description;

    public int BlockSize { get; }

    /// <summary>How many blocks the overlay holds.</summary>
    public long BlocksInOverlay
    {
        get
        {
            long count = 0;
            for (int i = 0; i < _present.Length; i++)
                count += BitOperations.PopCount((ulong)Volatile.Read(ref _present[i]));
            return count;
        }
    }

    public void Read(long offset, Span<byte> destination)
    {
        long end = offset + destination.Length;
        long pos = offset;
        while (pos < end)
        {
            bool present = IsPresent(pos >> _blockShift);
            long runEnd = RunEnd(pos, end, present);
            (present ? _overlay : _base).Read(pos, destination.Slice((int)(pos - offset), (int)(runEnd - pos)));
            pos = runEnd;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> source, bool fua)
    {
        long end = offset + source.Length;
        long pos = offset;
        while (pos < end)
        {
            var slice = source[(int)(pos - offset)..];
            long block = pos >> _blockShift;
            if (IsPresent(block))
            {
                long runEnd = RunEnd(pos, end, present: true);
                _overlay.Write(pos, slice[..(int)(runEnd - pos)], fua);
                pos = runEnd;
                continue;
            }
            long wholeEnd = WholeBlocksEnd(pos, RunEnd(pos, end, present: false));
            if (wholeEnd > pos)
            {
                // Whole blocks replace the base's bytes entirely: nothing to copy up.
                _overlay.Write(pos, slice[..(int)(wholeEnd - pos)], fua);
                MarkPresent(block, wholeEnd);
                pos = wholeEnd;
                continue;
            }
            int n = (int)(Math.Min(BlockEnd(block), end) - pos);
            WritePartialBlock(block, pos, slice[..n], n, fua);
            pos += n;
        }
    }

    public void Flush() => _overlay.Flush();

    /// <summary>Only whole blocks are trimmed (a trim may round inward); they become zeroes in the overlay.</summary>
    public void Trim(long offset, long length, bool fua)
    {
        long end = offset + length;
        long start = Math.Min(AlignUp(offset), end);
        long wholeEnd = WholeBlocksEnd(start, end);
        if (wholeEnd > start)
        {
            _overlay.WriteZeroes(start, wholeEnd - start, mayPunch: true, fastOnly: false, fua);
            MarkPresent(start >> _blockShift, wholeEnd);
        }
        else if (fua)
        {
            _overlay.Flush();
        }
    }

    public void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua)
    {
        if (length <= 0)
        {
            if (fua)
                _overlay.Flush();
            return;
        }
        long end = offset + length;
        if (fastOnly)
            ThrowIfNotFast(offset, end);
        long pos = offset;
        while (pos < end)
        {
            long block = pos >> _blockShift;
            long wholeEnd = WholeBlocksEnd(pos, end);
            if (wholeEnd > pos)
            {
                _overlay.WriteZeroes(pos, wholeEnd - pos, mayPunch, fastOnly, fua);
                MarkPresent(block, wholeEnd);
                pos = wholeEnd;
                continue;
            }
            long n = Math.Min(BlockEnd(block), end) - pos;
            if (IsPresent(block))
                _overlay.WriteZeroes(pos, n, mayPunch, fastOnly, fua);
            else
                WritePartialBlock(block, pos, ReadOnlySpan<byte>.Empty, (int)n, fua);
            pos += n;
        }
    }

    public void Cache(long offset, long length)
    {
        long end = offset + length;
        long pos = offset;
        while (pos < end)
        {
            bool present = IsPresent(pos >> _blockShift);
            long runEnd = RunEnd(pos, end, present);
            (present ? _overlay : _base).Cache(pos, runEnd - pos);
            pos = runEnd;
        }
    }

    /// <summary>Overlay blocks report the overlay's extents, the rest the base's.</summary>
    public void GetExtents(long offset, long length, List<Extent> extents, int maxExtents)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExtents);
        int first = extents.Count;
        var inner = new List<Extent>();
        long end = offset + length;
        long pos = offset;
        while (pos < end && extents.Count - first < maxExtents)
        {
            bool present = IsPresent(pos >> _blockShift);
            long runEnd = RunEnd(pos, end, present);
            var store = present ? _overlay : _base;
            inner.Clear();
            if (store.Capabilities.HasFlag(StoreCapabilities.Extents))
                store.GetExtents(pos, runEnd - pos, inner, maxExtents - (extents.Count - first));
            else
                inner.Add(new Extent(runEnd - pos, ExtentFlags.Data));

            long runPos = pos;
            foreach (var extent in inner)
            {
                long n = Math.Min(extent.Length, runEnd - runPos);
                if (n <= 0)
                    break;
                if (extents.Count > first && extents[^1].Flags == extent.Flags)
                    extents[^1] = extents[^1] with { Length = extents[^1].Length + n };
                else if (extents.Count - first < maxExtents)
                    extents.Add(new Extent(n, extent.Flags));
                else
                    return;
                runPos += n;
            }
            if (runPos < runEnd)
                return; // The inner store stopped early; the caller asks again from here.
            pos = runEnd;
        }
    }

    public void Dispose()
    {
        _overlay.Dispose();
        if (_ownsBase)
            _base.Dispose();
    }

    /// <summary>
    /// Copies a block up from the base with <paramref name="data"/> (or zeroes when it is empty)
    /// merged in at <paramref name="pos"/>, then marks it present. Rechecks under the stripe lock:
    /// another request may have copied the block up while this one waited.
    /// </summary>
    private void WritePartialBlock(long block, long pos, ReadOnlySpan<byte> data, int length, bool fua)
    {
        lock (_stripes[block & (LockStripes - 1)])
        {
            if (IsPresent(block))
            {
                if (data.IsEmpty)
                    _overlay.WriteZeroes(pos, length, mayPunch: true, fastOnly: false, fua);
                else
                    _overlay.Write(pos, data, fua);
                return;
            }

            long blockStart = block << _blockShift;
            int blockLength = (int)(BlockEnd(block) - blockStart);
            byte[] buffer = ArrayPool<byte>.Shared.Rent(blockLength);
            try
            {
                var whole = buffer.AsSpan(0, blockLength);
                _base.Read(blockStart, whole);
                var target = whole.Slice((int)(pos - blockStart), length);
                if (data.IsEmpty)
                    target.Clear();
                else
                    data.CopyTo(target);
                _overlay.Write(blockStart, whole, fua);
                MarkPresent(block, BlockEnd(block));
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>FAST_ZERO must fail before anything is changed if any part would be slow.</summary>
    private void ThrowIfNotFast(long offset, long end)
    {
        if (!Capabilities.HasFlag(StoreCapabilities.FastZero))
            throw new StorageException(Libc.ENOTSUP, $"{Description}: the overlay cannot zero quickly.");
        // Partial blocks not yet in the overlay need a copy-up (a read of the base): not fast.
        long firstBlock = offset >> _blockShift;
        long lastBlock = (end - 1) >> _blockShift;
        bool headPartial = offset != firstBlock << _blockShift && !IsPresent(firstBlock);
        bool tailPartial = end != BlockEnd(lastBlock) && !IsPresent(lastBlock);
        if (headPartial || tailPartial)
            throw new StorageException(Libc.ENOTSUP, $"{Description}: zeroing part of a block needs a copy-up.");
    }

    private bool IsPresent(long block) =>
        (Volatile.Read(ref _present[block >> 6]) & (1L << (int)(block & 63))) != 0;

    /// <summary>Marks every block from <paramref name="block"/> up to the one holding <paramref name="endPos"/>-1.</summary>
    private void MarkPresent(long block, long endPos)
    {
        long last = (endPos - 1) >> _blockShift;
        while (block <= last)
        {
            int bit = (int)(block & 63);
            int count = (int)Math.Min(64 - bit, last - block + 1);
            long mask = count == 64 ? -1L : ((1L << count) - 1) << bit;
            ref long word = ref _present[block >> 6];
            if ((Volatile.Read(ref word) & mask) != mask)
                Interlocked.Or(ref word, mask);
            block += count;
        }
    }

    /// <summary>End (clipped to <paramref name="end"/>) of the run of blocks from pos's block that share its state.</summary>
    private long RunEnd(long pos, long end, bool present)
    {
        long lastBlock = (end - 1) >> _blockShift;
        long block = (pos >> _blockShift) + 1;
        while (block <= lastBlock)
        {
            long bits = Volatile.Read(ref _present[block >> 6]);
            ulong differs = (ulong)(present ? ~bits : bits) >> (int)(block & 63);
            if (differs != 0)
            {
                long other = block + BitOperations.TrailingZeroCount(differs);
                return other <= lastBlock ? Math.Min(other << _blockShift, end) : end;
            }
            block = ((block >> 6) + 1) << 6;
        }
        return end;
    }

    /// <summary>
    /// The end of the whole blocks in [pos, end) when pos starts a block, else pos. The last
    /// block of the store may be short; reaching the store's end covers it entirely.
    /// </summary>
    private long WholeBlocksEnd(long pos, long end)
    {
        if ((pos & (BlockSize - 1)) != 0)
            return pos;
        return end >= Size ? Size : end & ~(long)(BlockSize - 1);
    }

    private long BlockEnd(long block) => Math.Min((block + 1) << _blockShift, Size);

    private long AlignUp(long pos) => (pos + BlockSize - 1) & ~(long)(BlockSize - 1);
}
