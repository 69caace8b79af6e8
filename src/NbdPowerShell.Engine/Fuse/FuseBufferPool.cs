using System.Collections.Concurrent;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// Pinned request buffers, each large enough for the biggest FUSE message (a WRITE of max_write bytes, or the reply
/// to a READ of max_read bytes). A buffer travels with its request from read(2) of /dev/fuse to the reply, so the
/// pool size bounds the requests in flight; buffers are made on first need and reused after that, so steady-state
/// I/O allocates none. Pinned (on the POH) because the syscalls take their address.
/// </summary>
internal sealed class FuseBufferPool
{
    private readonly ConcurrentBag<byte[]> _free = new();
    private readonly SemaphoreSlim _slots;

    public int BufferSize { get; }
    public int Capacity { get; }

    public FuseBufferPool(int bufferSize, int capacity)
    {
        BufferSize = bufferSize;
        Capacity = capacity;
        _slots = new SemaphoreSlim(capacity, capacity);
    }

    /// <summary>Blocks (the caller is a dedicated reader thread) until a buffer is free; false once <paramref name="ct"/> is cancelled.</summary>
    public bool TryRent(CancellationToken ct, out byte[] buffer)
    {
        buffer = [];
        try { _slots.Wait(ct); }
        catch (OperationCanceledException) { return false; }
        buffer = _free.TryTake(out var b) ? b : GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
        return true;
    }

    public void Return(byte[] buffer)
    {
        _free.Add(buffer);
        _slots.Release();
    }
}
