namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A store whose reads can be served from the page cache without ever waiting for the device
/// (preadv2 with RWF_NOWAIT). The server tries small reads that way on the connection's reader
/// thread and sends the reply itself; only a read that would wait goes to a worker thread, so a
/// cached read costs no hand-off between threads.
/// </summary>
internal interface IPageCacheStore
{
    /// <summary>
    /// Fills <paramref name="destination"/> from the page cache (zeroes past the end of the file)
    /// and returns true, or returns false without waiting when part of the range is not cached,
    /// when the kernel or file system cannot read without waiting, or on any error: the caller
    /// then reads the blocking way, which reports the error. The destination's content is
    /// undefined after false.
    /// </summary>
    bool TryReadCached(long offset, Span<byte> destination);
}
