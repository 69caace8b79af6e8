namespace NbdPowerShell.Engine.Storage;

/// <summary>
/// A store whose bytes live in pinned chunks the server may hand to the kernel directly: reads go
/// out as one vectored send over the chunks, and write payloads are received straight into them.
/// </summary>
internal interface IPinnedMemoryStore
{
    /// <summary>Appends segments covering [offset, offset+length) in order; unallocated chunks come back as holes.</summary>
    void GetReadSegments(long offset, int length, List<MemorySegment> segments);

    /// <summary>Appends segments covering [offset, offset+length) in order, allocating chunks as needed; never holes.</summary>
    void GetWriteSegments(long offset, int length, List<MemorySegment> segments);
}
