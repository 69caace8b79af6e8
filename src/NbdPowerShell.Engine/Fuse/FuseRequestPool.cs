using System.Collections.Concurrent;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// Request objects, each with a pinned buffer large enough for the biggest FUSE message (a WRITE of max_write bytes,
/// or the reply to a READ of max_read bytes). A request travels from read(2) of /dev/fuse to the reply, so the pool
/// size bounds the requests in flight; requests are made on first need and reused after that, so steady-state I/O
/// allocates none. Pinned (on the POH) because the syscalls take the buffer's address.
/// </summary>
internal sealed class FuseRequestPool
{
    private readonly ConcurrentBag<FuseRequest> _free = new();
    private readonly SemaphoreSlim _slots;

    public int BufferSize { get; }
    public int Capacity { get; }

    public FuseRequestPool(int bufferSize, int capacity)
    {
        BufferSize = bufferSize;
        Capacity = capacity;
        _slots = new SemaphoreSlim(capacity, capacity);
    }

    /// <summary>Blocks (the caller is a dedicated reader thread) until a request is free; false once <paramref name="ct"/> is cancelled.</summary>
    public bool TryRent(CancellationToken ct, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out FuseRequest? request)
    {
        request = null;
        try { _slots.Wait(ct); }
        catch (OperationCanceledException) { return false; }
        request = _free.TryTake(out var r) ? r : new FuseRequest(BufferSize);
        return true;
    }

    public void Return(FuseRequest request)
    {
        _free.Add(request);
        _slots.Release();
    }
}
