using System.Buffers;
using System.Diagnostics;
using System.Security.Cryptography;

namespace NbdPowerShell.Engine.Copy;

/// <summary>The content hash of a whole disk.</summary>
public sealed record DiskHashResult
{
    public required string Source { get; init; }
    public required string Algorithm { get; init; }
    /// <summary>Lower-case hex, as sha256sum prints it.</summary>
    public required string Hash { get; init; }
    public long Size { get; init; }
    public long BytesRead { get; init; }
    /// <summary>Bytes hashed as zeroes without being read (holes and zero extents).</summary>
    public long BytesSkipped { get; init; }
    public int Connections { get; init; }
    public TimeSpan Duration { get; init; }
}

/// <summary>
/// Hashes a disk's content from offset 0 to its size, the same value a hash of the raw image gives (sha256sum).
/// Reads run ahead in parallel over all connections while the hash consumes them in order; holes and zero extents
/// are hashed as zeroes without being read.
/// </summary>
public static class DiskHasher
{
    /// <summary>The algorithms offered, by name.</summary>
    public static IReadOnlyList<string> Algorithms { get; } = ["SHA256", "SHA1", "SHA384", "SHA512", "MD5"];

    // Fed to the hash for holes; never written to.
    private static readonly byte[] s_zeroes = new byte[1 << 20];

    public static HashAlgorithmName ParseAlgorithm(string name) =>
        Algorithms.FirstOrDefault(a => a.Equals(name, StringComparison.OrdinalIgnoreCase)) is { } known
            ? new HashAlgorithmName(known)
            : throw new ArgumentException($"Unknown hash algorithm '{name}'; use one of {string.Join(", ", Algorithms)}.");

    /// <summary>
    /// Opens the disk at <paramref name="location"/>, hashes it with <see cref="DiskCopyOptions.HashAlgorithm"/> and closes it.
    /// Cancellation closes the connections at once and throws <see cref="DiskOperationCanceledException"/>.
    /// </summary>
    public static async Task<DiskHashResult> HashAsync(DiskLocation location, DiskCopyOptions options, DiskProgress progress, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var disk = await DiskOpener.OpenForReadingAsync(location, options, ct).ConfigureAwait(false);
        try
        {
            using var abort = ct.Register(disk.Abort);
            long size = disk.Size;
            int requestSize = DiskCopy.ChooseRequestSize(disk, disk, options.RequestSize);
            progress.StartPhase("Hashing", size);
            string hash = await ComputeAsync(disk, size, options.HashAlgorithm, requestSize, progress, ct).ConfigureAwait(false);
            progress.Stop();
            return new DiskHashResult
            {
                Source = disk.Name,
                Algorithm = options.HashAlgorithm.Name!,
                Hash = hash,
                Size = size,
                BytesRead = progress.BytesRead,
                BytesSkipped = size - progress.BytesRead,
                Connections = disk.Connections,
                Duration = clock.Elapsed,
            };
        }
        finally
        {
            await disk.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Hashes [0, <paramref name="length"/>) of an open disk; lower-case hex.</summary>
    internal static async Task<string> ComputeAsync(IDisk disk, long length, HashAlgorithmName algorithm, int requestSize, DiskProgress progress, CancellationToken ct)
    {
        using var hash = IncrementalHash.CreateHash(algorithm);
        var planner = new ChunkPlanner(disk, length, requestSize);
        int window = Math.Clamp(disk.Parallelism * 2, 2, 64);
        var pending = new Queue<(Chunk Chunk, byte[]? Buffer, ValueTask Read)>(window);
        var spare = new Stack<byte[]>();
        long hashed = 0;
        try
        {
            bool more = true;
            while (true)
            {
                while (more && pending.Count < window)
                {
                    Chunk chunk;
                    try { chunk = await planner.NextAsync(ct).ConfigureAwait(false); }
                    catch (Exception e) when (!ct.IsCancellationRequested) { throw Failed(disk, hashed, e); }
                    if (chunk.IsEnd)
                    {
                        more = false;
                        break;
                    }
                    if (chunk.IsZero)
                    {
                        pending.Enqueue((chunk, null, ValueTask.CompletedTask));
                        continue;
                    }
                    var buffer = spare.Count > 0 ? spare.Pop() : ArrayPool<byte>.Shared.Rent(requestSize);
                    ValueTask read;
                    try { read = disk.ReadAsync(chunk.Offset, buffer.AsMemory(0, (int)chunk.Length), ct); }
                    catch (Exception e) { read = ValueTask.FromException(e); }
                    pending.Enqueue((chunk, buffer, read));
                }
                if (pending.Count == 0)
                    break;
                var (c, b, r) = pending.Dequeue();
                try { await r.ConfigureAwait(false); }
                catch (Exception e) when (!ct.IsCancellationRequested) { throw Failed(disk, hashed, e); }
                if (b is null)
                {
                    for (long left = c.Length; left > 0; left -= s_zeroes.Length)
                        hash.AppendData(s_zeroes, 0, (int)Math.Min(left, s_zeroes.Length));
                }
                else
                {
                    hash.AppendData(b, 0, (int)c.Length);
                    progress.AddRead(c.Length);
                    spare.Push(b);
                }
                hashed += c.Length;
                progress.AddDone(c.Length);
            }
        }
        catch (Exception e) when (ct.IsCancellationRequested && e is not DiskOperationCanceledException)
        {
            throw new DiskOperationCanceledException(hashed, hashed, $"Hashing {disk.Name} was stopped after {DiskCopy.Bytes(hashed)}.", ct);
        }
        finally
        {
            // Reads still in flight own their buffers until they complete (they fail fast once the disk is aborted).
            while (pending.Count > 0)
            {
                var (_, b, r) = pending.Dequeue();
                try { await r.ConfigureAwait(false); }
                catch (Exception) { }
                if (b is not null)
                    spare.Push(b);
            }
            foreach (var b in spare)
                ArrayPool<byte>.Shared.Return(b);
        }
        return Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant();
    }

    private static DiskIOException Failed(IDisk disk, long hashed, Exception e) =>
        new(DiskSide.Source, hashed, hashed, $"Reading {disk.Name} failed after {DiskCopy.Bytes(hashed)} were hashed: {e.Message}", e);
}
