namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A randomly addressable run of bytes that an export serves. One instance is shared by every
/// connection to an export, so implementations must be safe for concurrent calls; the protocol
/// gives no ordering between overlapping in-flight requests, so only non-overlapping requests
/// need independent results.
/// Calls are synchronous: they run on worker threads and map to blocking pread/pwrite.
/// Failures throw <see cref="StorageException"/> carrying a Linux errno.
/// Callers have already validated ranges against <see cref="Size"/>.
/// </summary>
public interface IBlockStore : IDisposable
{
    /// <summary>Size in bytes.</summary>
    long Size { get; }

    /// <summary>What this store really does; the server advertises exactly these.</summary>
    StoreCapabilities Capabilities { get; }

    /// <summary>Human-readable origin, e.g. "file:/srv/disk.img" or "memory".</summary>
    string Description { get; }

    void Read(long offset, Span<byte> destination);

    /// <param name="fua">Data must be on stable storage before returning.</param>
    void Write(long offset, ReadOnlySpan<byte> source, bool fua);

    /// <summary>Everything written so far (and acknowledged) becomes durable.</summary>
    void Flush();

    /// <summary>Hint that the range is no longer needed; may round inward or do nothing.</summary>
    void Trim(long offset, long length, bool fua);

    /// <param name="mayPunch">False when the client sent NO_HOLE: the range must stay allocated.</param>
    /// <param name="fastOnly">FAST_ZERO: throw StorageException(ENOTSUP) instead of doing slow work.</param>
    void WriteZeroes(long offset, long length, bool mayPunch, bool fastOnly, bool fua);

    /// <summary>Prefetch hint.</summary>
    void Cache(long offset, long length);

    /// <summary>
    /// Appends extents that describe [offset, offset+length) in order, starting exactly at offset.
    /// May stop early (callers ask again), must cover at least one byte, and never appends more
    /// than <paramref name="maxExtents"/>. Adjacent extents may share flags.
    /// </summary>
    void GetExtents(long offset, long length, List<Extent> extents, int maxExtents);
}
