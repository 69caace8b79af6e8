using System.Buffers.Binary;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// A cheap identity check for read-only images: SHA-256 over the size and 16 blocks of 4 KiB at fixed offsets spread
/// evenly from the first to the last block. Two servers with the same fingerprint serve the same size and the same
/// bytes at those 64 KiB; nothing more is proven. It catches the wrong image, another version of a disk built
/// separately, a truncated or reformatted copy; it misses two images that differ only between the sampled blocks
/// (e.g. one changed file inside an otherwise identical filesystem). Make replicas by copying, and do not change an
/// image while it is served read-only.
/// </summary>
public static class ContentFingerprint
{
    public const int Blocks = 16;
    public const int BlockSize = 4096;
    private const string Prefix = "v1:16x4096:sha256:";

    /// <summary>The offsets sampled for an image of <paramref name="size"/> bytes (ascending, distinct, block-aligned).</summary>
    public static IReadOnlyList<long> Offsets(long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        if (size <= BlockSize) return [0];
        long lastBlock = (size - BlockSize) / BlockSize; // index of the last whole block
        var offsets = new SortedSet<long>();
        for (int i = 0; i < Blocks; i++)
            offsets.Add(lastBlock * i / (Blocks - 1) * BlockSize);
        return offsets.ToArray();
    }

    /// <summary>Reads the sample blocks over a connection in transmission and returns the fingerprint text.</summary>
    public static async Task<string> ComputeAsync(NbdNegotiatedConnection connection, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        long size = connection.Size;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var header = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(header, size);
        sha.AppendData(header);
        var block = new byte[BlockSize];
        foreach (long offset in Offsets(size))
        {
            int length = (int)Math.Min(BlockSize, size - offset);
            await connection.ReadAsync(offset, block.AsMemory(0, length), ct).ConfigureAwait(false);
            BinaryPrimitives.WriteInt64BigEndian(header, offset);
            sha.AppendData(header);
            sha.AppendData(block, 0, length);
        }
        return Prefix + Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }
}
