using System.Runtime.CompilerServices;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// One FUSE request in flight: the pinned buffer it was read into (which carries the reply too) and what the answer
/// to its NBD operation needs. Pooled (<see cref="FuseRequestPool"/>) and reused, and so is the continuation it
/// hands to the operation: awaiting here, instead of in an async method per request, allocates nothing. (An async
/// method's state machine is boxed when it has to wait; the pooling builder keeps only a few boxes per core and
/// thread, far fewer than the requests in flight, so nearly every request made a new one.)
/// </summary>
internal sealed class FuseRequest
{
    private readonly Action _onCompleted;
    private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _awaiter;
    private Action<FuseRequest, Exception?>? _then;

    public FuseRequest(int bufferSize)
    {
        Buffer = GC.AllocateUninitializedArray<byte>(bufferSize, pinned: true);
        _onCompleted = OnCompleted;
    }

    public byte[] Buffer { get; }

    /// <summary>The kernel's id of the request, to answer it.</summary>
    public ulong Unique { get; private set; }
    public long Offset { get; private set; }
    public long Length { get; private set; }
    /// <summary>Where a READ's reply is built: <see cref="Buffer"/>, unless the kernel asked for more than it holds.</summary>
    public byte[] Target { get; private set; } = [];
    /// <summary>ZERO_RANGE may deallocate (a punch) or not.</summary>
    public bool MayPunch { get; private set; }

    public void Describe(ulong unique, long offset, long length, byte[]? target = null, bool mayPunch = false)
    {
        Unique = unique;
        Offset = offset;
        Length = length;
        Target = target ?? Buffer;
        MayPunch = mayPunch;
    }

    /// <summary>
    /// Calls <paramref name="then"/> with this request and the operation's failure (null on success) once
    /// <paramref name="operation"/> completes: at once if it has, else on the thread that completes it.
    /// <paramref name="then"/> should be a cached delegate, so that nothing is allocated.
    /// </summary>
    public void ContinueWith(ValueTask operation, Action<FuseRequest, Exception?> then)
    {
        var awaiter = operation.ConfigureAwait(false).GetAwaiter();
        if (awaiter.IsCompleted)
        {
            then(this, ResultOf(awaiter));
            return;
        }
        _awaiter = awaiter;
        _then = then;
        awaiter.UnsafeOnCompleted(_onCompleted);
    }

    private void OnCompleted()
    {
        var awaiter = _awaiter;
        var then = _then!;
        _awaiter = default;
        _then = null;
        then(this, ResultOf(awaiter));
    }

    /// <summary>Takes the result (which releases what the operation held, e.g. the NBD client's request slot).</summary>
    private static Exception? ResultOf(ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter awaiter)
    {
        try
        {
            awaiter.GetResult();
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
    }
}
