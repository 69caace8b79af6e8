namespace NbdPowerShell.Engine.Copy;

/// <summary>Which side of a copy failed.</summary>
public enum DiskSide
{
    Source,
    Destination,
}

/// <summary>Why a destination was refused before anything was written.</summary>
public enum DestinationProblem
{
    /// <summary>Read-only export, file system or device, or no write permission.</summary>
    ReadOnly,
    /// <summary>Smaller than the source.</summary>
    TooSmall,
    /// <summary>Has content the copy would overwrite, and overwriting was not allowed.</summary>
    Exists,
    /// <summary>Is the source itself.</summary>
    SameAsSource,
}

/// <summary>The destination cannot take the copy; nothing was written.</summary>
public sealed class DiskDestinationException : Exception
{
    public DiskDestinationException(DestinationProblem problem, string message, Exception? inner = null) : base(message, inner) => Problem = problem;

    public DestinationProblem Problem { get; }
}

/// <summary>
/// A copy or hash failed part way: reading the source or writing the destination. Says how far it got; the
/// original failure is the inner exception.
/// </summary>
public sealed class DiskIOException : Exception
{
    public DiskIOException(DiskSide side, long bytesDone, long completeUpTo, string message, Exception inner) : base(message, inner)
    {
        Side = side;
        BytesDone = bytesDone;
        CompleteUpTo = completeUpTo;
    }

    public DiskSide Side { get; }

    /// <summary>Bytes of the disk finished before the failure (not necessarily contiguous).</summary>
    public long BytesDone { get; }

    /// <summary>Everything before this offset was finished.</summary>
    public long CompleteUpTo { get; }
}

/// <summary>A copy or hash was cancelled (Ctrl+C); says how far it got. A partial destination is left as it is.</summary>
public sealed class DiskOperationCanceledException : OperationCanceledException
{
    public DiskOperationCanceledException(long bytesDone, long completeUpTo, string message, CancellationToken token) : base(message, token)
    {
        BytesDone = bytesDone;
        CompleteUpTo = completeUpTo;
    }

    public long BytesDone { get; }
    public long CompleteUpTo { get; }
}
