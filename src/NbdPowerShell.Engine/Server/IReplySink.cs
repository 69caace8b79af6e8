using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Where <see cref="RequestExecutor"/> puts a reply: straight onto the connection
/// (<see cref="ReplyWriter"/>, for requests run on worker threads), or into the reader's
/// <see cref="ReplyBatch"/> (requests the reader runs itself, sent together). Each call is one
/// whole reply or structured chunk.
/// </summary>
internal interface IReplySink
{
    /// <summary>Data may come from pinned memory without a copy in user space (plain sockets, not TLS).</summary>
    bool ZeroCopy { get; }

    /// <summary>Large file reads are spliced from the page cache to the socket (see <see cref="FileReadSplicing"/>).</summary>
    bool SpliceFiles { get; }

    void SimpleReply(ulong cookie, NbdError error, ReadOnlySpan<byte> data);

    /// <summary>Successful simple READ reply whose data is spliced from a file.</summary>
    void SimpleReplyFromFile(ulong cookie, int descriptor, long offset, int length);

    /// <summary>Successful simple READ reply whose data is a memory store's segments.</summary>
    void SimpleReplyGather(ulong cookie, ReadOnlySpan<MemorySegment> segments);

    /// <summary>OFFSET_DATA chunk: header, u64 offset, then the data.</summary>
    void DataChunk(ulong cookie, bool done, ulong offset, ReadOnlySpan<byte> data);

    void DataChunkFromFile(ulong cookie, bool done, ulong offset, int descriptor, int length);

    /// <summary>OFFSET_DATA chunk whose data is a memory store's segments (<paramref name="length"/> bytes in all).</summary>
    void DataChunkGather(ulong cookie, bool done, ulong offset, ReadOnlySpan<MemorySegment> segments, int length);

    /// <summary>OFFSET_HOLE chunk: u64 offset, u32 size.</summary>
    void HoleChunk(ulong cookie, bool done, ulong offset, uint size);

    /// <summary>ERROR chunk with no message; always the final chunk.</summary>
    void ErrorChunk(ulong cookie, NbdError error);

    /// <summary>BLOCK_STATUS chunk; <paramref name="descriptors"/> is already encoded as u32 id then {u32 length, u32 flags} pairs.</summary>
    void BlockStatusChunk(ulong cookie, ReadOnlySpan<byte> descriptors);
}
