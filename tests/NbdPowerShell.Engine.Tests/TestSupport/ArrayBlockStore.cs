using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>A plain byte-array store with configurable capabilities, for protocol tests that must not depend on a real backend.</summary>
internal sealed class ArrayBlockStore : IBlockStore
{
    public readonly byte[] Data;
    public int Flushes;
    public int FuaWrites;
    public Func<string, StorageException?>? Fault;

    public ArrayBlockStore(int size, StoreCapabilities capabilities = StoreCapabilities.Write | StoreCapabilities.Flush |
        StoreCapabilities.Fua | StoreCapabilities.Trim | StoreCapabilities.WriteZeroes | StoreCapabilities.Cache |
        StoreCapabilities.MultiConnCoherent)
    {
        Data = new byte[size];
        Capabilities = capabilities;
    }

    public long Size => Data.Length;
    public StoreCapabilities Capabilities { get; }
    public string Description => "array";
    public bool Disposed { get; private set; }

    public void Read(long offset, Span<byte> destination)
    {
        Check("read");
        Data.AsSpan((int)offset, destination.Length).CopyTo(destination);
    }

    public void Write(long offset, ReadOnlySpan<byte> source, bool fua)
    {
        Check("write");
        source.CopyTo(Data.AsSpan((int)offset));
        if (fua)
            Interlocked.Increment(ref FuaWrites);
    }

    public void Flush()
    {
        Check("flush");
        Interlocked.Increment(ref Flushes);
    }

    public void Trim(long offset, long length, bool fua) => Data.AsSpan((int)offset, (int)length).Clear();

    public void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua)
    {
        if (fastOnly && !Capabilities.HasFlag(StoreCapabilities.FastZero))
            throw new StorageException(95, "not fast");
        Data.AsSpan((int)offset, (int)length).Clear();
    }

    public void Cache(long offset, long length) { }

    /// <summary>Reports 4 KiB blocks of zeroes as holes, to exercise hole-aware paths.</summary>
    public void GetExtents(long offset, long length, List<Extent> extents, int maxExtents)
    {
        long end = offset + length;
        long pos = offset;
        while (pos < end && extents.Count < maxExtents)
        {
            long blockEnd = Math.Min(end, (pos / 4096 + 1) * 4096);
            bool zero = Data.AsSpan((int)pos, (int)(blockEnd - pos)).IndexOfAnyExcept((byte)0) < 0;
            var flags = zero ? ExtentFlags.Hole | ExtentFlags.Zero : ExtentFlags.Data;
            if (extents.Count > 0 && extents[^1].Flags == flags && pos != offset)
                extents[^1] = extents[^1] with { Length = extents[^1].Length + blockEnd - pos };
            else
                extents.Add(new Extent(blockEnd - pos, flags));
            pos = blockEnd;
        }
    }

    private void Check(string op)
    {
        if (Fault?.Invoke(op) is { } e)
            throw e;
    }

    public void Dispose() => Disposed = true;
}
