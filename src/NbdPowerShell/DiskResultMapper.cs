using NbdPowerShell.Engine.Copy;

namespace NbdPowerShell;

/// <summary>Maps the engine's copy and hash results to the public output types.</summary>
internal static class DiskResultMapper
{
    public static NbdCopyResult ToCopyResult(DiskCopyResult r) => new()
    {
        Source = r.Source,
        Destination = r.Destination,
        Size = r.Size,
        BytesRead = r.BytesRead,
        BytesWritten = r.BytesWritten,
        BytesSkipped = r.BytesSkipped,
        BytesZeroed = r.BytesZeroed,
        Duration = r.Duration,
        BytesPerSecond = r.Duration > TimeSpan.Zero ? r.Size / r.Duration.TotalSeconds : 0,
        SourceConnections = r.SourceConnections,
        DestinationConnections = r.DestinationConnections,
        RequestSize = r.RequestSize,
        IsDestinationCreated = r.DestinationCreated,
        IsFlushed = r.Flushed,
        IsVerified = r.SourceHash is null ? null : r.SourceHash == r.DestinationHash,
        HashAlgorithm = r.HashAlgorithm,
        SourceHash = r.SourceHash,
        DestinationHash = r.DestinationHash,
    };

    public static NbdDiskHash ToDiskHash(DiskHashResult r) => new()
    {
        Algorithm = r.Algorithm,
        Hash = r.Hash,
        Source = r.Source,
        Size = r.Size,
        BytesRead = r.BytesRead,
        BytesSkipped = r.BytesSkipped,
        Connections = r.Connections,
        Duration = r.Duration,
    };
}
