namespace NbdPowerShell.Engine.Storage;

[Flags]
public enum StoreCapabilities
{
    None = 0,
    /// <summary>Writes are accepted.</summary>
    Write = 1 << 0,
    /// <summary>Flush makes data durable (a store without a cache may still set it: flushing is then free).</summary>
    Flush = 1 << 1,
    /// <summary>Per-write durability is supported.</summary>
    Fua = 1 << 2,
    Trim = 1 << 3,
    WriteZeroes = 1 << 4,
    /// <summary>WriteZeroes with fastOnly succeeds at least sometimes.</summary>
    FastZero = 1 << 5,
    /// <summary>GetExtents reports real holes (otherwise everything is data).</summary>
    Extents = 1 << 6,
    Cache = 1 << 7,
    /// <summary>All connections see one coherent view: a flush on one covers writes from all.</summary>
    MultiConnCoherent = 1 << 8,
    Rotational = 1 << 9,
    /// <summary>
    /// Calls never wait on I/O (memory). The server then runs requests inline on the connection's
    /// reader instead of handing each to a worker: for microsecond operations the hand-off, not the
    /// work, is the cost.
    /// </summary>
    NonBlocking = 1 << 10,
}
