using System.Threading.Tasks.Sources;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// One in-flight request of a <see cref="PipelinedConnection"/>: where its reply goes and the awaitable that
/// completes when the reply is in. Slots are preallocated per connection and reused, so a request costs no
/// allocation; the cookie on the wire is the slot index plus a generation that changes on every reuse, so a stray
/// or duplicated reply is recognised as a protocol error instead of landing in someone else's buffer.
/// </summary>
internal sealed class RequestSlot : IValueTaskSource
{
    public const int Free = 0;
    public const int InFlight = 1;
    public const int Completed = 2;

    private readonly PipelinedConnection _owner;
    private ManualResetValueTaskSourceCore<bool> _core;

    public RequestSlot(PipelinedConnection owner, int index, bool inlineCompletions)
    {
        _owner = owner;
        Index = index;
        _core.RunContinuationsAsynchronously = !inlineCompletions;
    }

    public int Index { get; }

    /// <summary>Free, InFlight or Completed; moves InFlight to Completed only through <see cref="TryComplete"/>.</summary>
    public int State;

    public uint Generation { get; private set; }

    public ulong Cookie => ((ulong)Generation << 32) | (uint)Index;

    public NbdCommand Command { get; private set; }
    public long Offset { get; private set; }
    public uint Length { get; private set; }
    /// <summary>Where READ data goes.</summary>
    public Memory<byte> Buffer { get; private set; }
    /// <summary>Where BLOCK_STATUS extents go (appended).</summary>
    public List<Extent>? Extents { get; private set; }

    /// <summary>Bytes of a READ covered by data and hole chunks so far.</summary>
    public long Covered;
    /// <summary>Bytes of a BLOCK_STATUS request covered by the extents appended so far.</summary>
    public long ExtentBytes;
    /// <summary>The first error chunk's value; the request fails with it once the final chunk arrives.</summary>
    public NbdError Error;
    public string? ErrorMessage;

    public void Prepare(NbdCommand command, long offset, uint length, Memory<byte> buffer, List<Extent>? extents)
    {
        _core.Reset();
        Generation++;
        Command = command;
        Offset = offset;
        Length = length;
        Buffer = buffer;
        Extents = extents;
        Covered = 0;
        ExtentBytes = 0;
        Error = NbdError.None;
        ErrorMessage = null;
    }

    public ValueTask AsValueTask() => new(this, _core.Version);

    /// <summary>Completes the request once; false when it was completed already (a failure raced with its reply).</summary>
    public bool TryComplete(Exception? failure)
    {
        if (Interlocked.CompareExchange(ref State, Completed, InFlight) != InFlight)
            return false;
        Buffer = default; // the caller owns the buffer again; never touch it after this point
        Extents = null;
        if (failure is null)
            _core.SetResult(true);
        else
            _core.SetException(failure);
        return true;
    }

    public void GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _owner.Release(this);
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
