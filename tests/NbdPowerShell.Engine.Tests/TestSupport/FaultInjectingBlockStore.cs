using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// Wraps a store and, per call, may throw what <see cref="Fault"/> returns (a StorageException
/// with an errno, or any other exception) or sleep first. Counts what it injected.
/// </summary>
internal sealed class FaultInjectingBlockStore : IBlockStore
{
    private readonly IBlockStore _inner;
    private int _faults;
    private int _held;
    private readonly ManualResetEventSlim _release = new(false);

    public FaultInjectingBlockStore(IBlockStore inner) => _inner = inner;

    /// <summary>(operation, offset, length) → exception to throw, or null to pass the call through.</summary>
    public Func<string, long, long, Exception?>? Fault { get; set; }

    /// <summary>Sleep before every write (makes in-flight windows wide enough to stop a server inside them).</summary>
    public TimeSpan WriteDelay { get; set; }

    /// <summary>
    /// Writes at offsets this returns true for wait in the store until <see cref="ReleaseHeldWrites"/>: a request held
    /// in flight for as long as a test needs, where a delay would only make that likely.
    /// </summary>
    public Func<long, bool>? HoldWrite { get; set; }

    /// <summary>Writes waiting because of <see cref="HoldWrite"/> (and those released since).</summary>
    public int HeldWrites => Volatile.Read(ref _held);

    public void ReleaseHeldWrites() => _release.Set();

    public int FaultsInjected => Volatile.Read(ref _faults);
    public bool Disposed { get; private set; }

    public long Size => _inner.Size;
    public StoreCapabilities Capabilities => _inner.Capabilities;
    public string Description => "faulty:" + _inner.Description;

    public void Read(long offset, Span<byte> destination)
    {
        Check("read", offset, destination.Length);
        _inner.Read(offset, destination);
    }

    public void Write(long offset, ReadOnlySpan<byte> source, bool fua)
    {
        if (WriteDelay > TimeSpan.Zero)
            Thread.Sleep(WriteDelay);
        if (HoldWrite?.Invoke(offset) == true)
        {
            Interlocked.Increment(ref _held);
            // Bounded: a test that forgets to release fails on its own assertions instead of hanging the run.
            _release.Wait(TimeSpan.FromSeconds(60));
        }
        Check("write", offset, source.Length);
        _inner.Write(offset, source, fua);
    }

    public void Flush()
    {
        Check("flush", 0, 0);
        _inner.Flush();
    }

    public void Trim(long offset, long length, bool fua)
    {
        Check("trim", offset, length);
        _inner.Trim(offset, length, fua);
    }

    public void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua)
    {
        Check("zero", offset, length);
        _inner.WriteZeroes(offset, length, mayPunch, fastOnly, fua);
    }

    public void Cache(long offset, long length)
    {
        Check("cache", offset, length);
        _inner.Cache(offset, length);
    }

    public void GetExtents(long offset, long length, List<Extent> extents, int maxExtents)
    {
        Check("extents", offset, length);
        _inner.GetExtents(offset, length, extents, maxExtents);
    }

    private void Check(string op, long offset, long length)
    {
        if (Fault?.Invoke(op, offset, length) is { } e)
        {
            Interlocked.Increment(ref _faults);
            throw e;
        }
    }

    public void Dispose()
    {
        Disposed = true;
        _inner.Dispose();
    }
}
