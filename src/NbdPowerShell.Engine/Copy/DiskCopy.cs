using System.Buffers;
using System.Diagnostics;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Copy;

/// <summary>What a finished copy did.</summary>
public sealed record DiskCopyResult
{
    public required string Source { get; init; }
    public required string Destination { get; init; }
    public long Size { get; init; }
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    /// <summary>Bytes not written as data: holes in the source and all-zero blocks (zeroed on the destination or already zero there).</summary>
    public long BytesSkipped { get; init; }
    /// <summary>Bytes made zero on the destination with zero requests (the rest of <see cref="BytesSkipped"/> was already zero).</summary>
    public long BytesZeroed { get; init; }
    public TimeSpan Duration { get; init; }
    public int SourceConnections { get; init; }
    public int DestinationConnections { get; init; }
    public int RequestSize { get; init; }
    public bool DestinationCreated { get; init; }
    public bool Flushed { get; init; }
    /// <summary>Set with <see cref="DiskCopyOptions.Verify"/>: the hashes of the source and of the destination's first <see cref="Size"/> bytes.</summary>
    public string? SourceHash { get; init; }
    public string? DestinationHash { get; init; }
    public string? HashAlgorithm { get; init; }
}

/// <summary>
/// A copy from one disk to another, in two steps: <see cref="PrepareAsync"/> opens both sides and refuses a
/// destination that cannot take the copy (before anything is written, so a -WhatIf can describe it), then
/// <see cref="RunAsync"/> copies.
/// <para>
/// The copy is sparse-aware: the source's extents (NBD base:allocation, SEEK_DATA/SEEK_HOLE on files) are walked
/// ahead of the workers, holes are never read, and on the destination they become zero requests (FAST_ZERO first,
/// WRITE_ZEROES, punched holes, BLKZEROOUT) or nothing at all when the destination already reads as zeroes (a new
/// file, or an export whose block status says so). Data blocks that are all zeroes are treated like holes.
/// Several workers each keep one request in flight (a few per NBD connection), all connections busy at once.
/// </para>
/// </summary>
public sealed class DiskCopy : IAsyncDisposable
{
    /// <summary>Buffers of all workers together stay below this, whatever the request size.</summary>
    private const long BufferBudget = 256L << 20;

    private readonly DiskCopyOptions _options;
    private readonly string? _createPath;
    private IDisk? _destination;
    private long[] _active = [];
    private readonly object _failureLock = new();
    private (DiskSide Side, Exception Error)? _failure;

    private DiskCopy(IDisk source, IDisk? destination, string? createPath, bool overwrites, DiskCopyOptions options)
    {
        Source = source;
        _destination = destination;
        _createPath = createPath;
        Overwrites = overwrites;
        _options = options;
    }

    public IDisk Source { get; }

    /// <summary>The destination has content that the copy overwrites.</summary>
    public bool Overwrites { get; }

    /// <summary>A sentence naming the destination and what happens to it, for -WhatIf and confirmations.</summary>
    public string DescribeDestination()
    {
        if (_createPath is not null)
            return $"{_createPath} (a new {Bytes(Source.Size)} file)";
        var d = _destination!;
        string what = !Overwrites ? "it reads as zeroes now"
            : d.Size > Source.Size ? $"its first {Bytes(Source.Size)} are overwritten"
            : "its content is overwritten";
        return $"{d.Name} ({Kind(d)}; {what})";
    }

    private static string Kind(IDisk d) => d switch
    {
        NbdDisk => $"an NBD export of {Bytes(d.Size)}",
        LocalDisk { IsBlockDevice: true } => $"a block device of {Bytes(d.Size)}",
        _ => $"an existing {Bytes(d.Size)} file",
    };

    /// <summary>
    /// Opens the source, then the destination, and checks that the copy can go ahead: the destination is writable,
    /// at least as large as the source, not the source itself, and, when it has content, <see cref="DiskCopyOptions.Overwrite"/>
    /// allows overwriting it. Throws <see cref="DiskDestinationException"/> otherwise; nothing is written either way.
    /// A destination path that does not exist is created by <see cref="RunAsync"/>.
    /// </summary>
    public static async Task<DiskCopy> PrepareAsync(DiskLocation source, DiskLocation destination, DiskCopyOptions options, CancellationToken ct)
    {
        if (SameDisk(source, destination))
            throw new DiskDestinationException(DestinationProblem.SameAsSource, $"The destination {destination} is the source itself; nothing was written.");
        var src = await DiskOpener.OpenForReadingAsync(source, options, ct).ConfigureAwait(false);
        try
        {
            if (destination.Uri is { } uri)
            {
                var nbd = await NbdDisk.OpenAsync(uri, options.Connections, options.Client, ct).ConfigureAwait(false);
                try
                {
                    if (nbd.IsReadOnly)
                        throw new DiskDestinationException(DestinationProblem.ReadOnly, $"The destination {nbd.Name} is a read-only export; nothing was written.");
                    CheckSize(src, nbd);
                    bool zeroed = await nbd.CheckZeroedAsync(ct).ConfigureAwait(false);
                    return Checked(new DiskCopy(src, nbd, null, overwrites: !zeroed, options));
                }
                catch
                {
                    await nbd.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
            }

            string path = destination.Path!;
            if (Directory.Exists(path))
                throw new ArgumentException($"The destination '{path}' is a directory; name a file or block device.");
            if (!File.Exists(path))
            {
                string? parent = Path.GetDirectoryName(path);
                if (parent is not null && !Directory.Exists(parent))
                    throw new DirectoryNotFoundException($"Cannot create '{path}': the directory '{parent}' does not exist.");
                return new DiskCopy(src, null, path, overwrites: false, options);
            }
            LocalDisk local;
            try
            {
                local = LocalDisk.Open(path, writable: true);
            }
            catch (Exception e) when (e is UnauthorizedAccessException || e is StorageException { Errno: 1 or 13 or 30 })
            {
                throw new DiskDestinationException(DestinationProblem.ReadOnly, $"The destination '{path}' cannot be written: {e.Message} Nothing was written.", e);
            }
            try
            {
                CheckSize(src, local);
                return Checked(new DiskCopy(src, local, null, overwrites: true, options));
            }
            catch
            {
                await local.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
        catch
        {
            await src.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static DiskCopy Checked(DiskCopy copy)
    {
        if (copy.Overwrites && !copy._options.Overwrite)
            throw new DiskDestinationException(DestinationProblem.Exists,
                $"The destination {copy._destination!.Name} ({Kind(copy._destination)}) holds data that the copy would overwrite; add -Force to overwrite it. Nothing was written.");
        return copy;
    }

    private static void CheckSize(IDisk source, IDisk destination)
    {
        if (destination.Size < source.Size)
            throw new DiskDestinationException(DestinationProblem.TooSmall,
                $"The destination {destination.Name} holds {Bytes(destination.Size)} ({destination.Size} bytes) but the source {source.Name} has {Bytes(source.Size)} ({source.Size} bytes); nothing was written.");
    }

    private static bool SameDisk(DiskLocation a, DiskLocation b)
    {
        if (a.Uri is not null || b.Uri is not null)
            return a.Uri is not null && b.Uri is not null && a.Uri.ToString() == b.Uri.ToString();
        return Resolve(a.Path!) == Resolve(b.Path!);

        static string Resolve(string path)
        {
            try { return File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? path; }
            catch (IOException) { return path; }
        }
    }

    /// <summary>
    /// Creates the destination if needed, copies, then flushes and verifies when asked. Progress goes to
    /// <paramref name="progress"/>. Cancellation closes the connections at once and throws
    /// <see cref="DiskOperationCanceledException"/>; a failure part way throws <see cref="DiskIOException"/>. Either
    /// way the destination keeps what was written so far.
    /// </summary>
    public async Task<DiskCopyResult> RunAsync(DiskProgress progress, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        long size = Source.Size;
        bool created = false;
        if (_destination is null)
        {
            _destination = LocalDisk.Create(_createPath!, size);
            created = true;
        }
        else if (_destination is LocalDisk local && Overwrites)
        {
            local.TryZeroPrefix(size); // one punch instead of one per hole; the copy then skips holes
        }
        var destination = _destination;
        int requestSize = ChooseRequestSize(Source, destination, _options.RequestSize);

        using var abort = ct.Register(() =>
        {
            Source.Abort();
            destination.Abort();
        });

        progress.StartPhase("Copying", size);
        await CopyAsync(destination, size, requestSize, progress, ct).ConfigureAwait(false);

        if (_options.Flush)
        {
            try { await destination.FlushAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (!ct.IsCancellationRequested)
            {
                throw new DiskIOException(DiskSide.Destination, size, size, $"Flushing {destination.Name} after the copy failed: {e.Message}", e);
            }
        }

        long read = progress.BytesRead, written = progress.BytesWritten, zeroed = progress.BytesZeroed;
        string? sourceHash = null, destinationHash = null;
        if (_options.Verify)
        {
            progress.StartPhase("Verifying", 2 * size);
            var s = DiskHasher.ComputeAsync(Source, size, _options.HashAlgorithm, requestSize, progress, ct);
            var d = DiskHasher.ComputeAsync(destination, size, _options.HashAlgorithm, requestSize, progress, ct);
            try { sourceHash = await s.ConfigureAwait(false); }
            finally { destinationHash = await d.ConfigureAwait(false); }
        }
        progress.Stop();

        return new DiskCopyResult
        {
            Source = Source.Name,
            Destination = destination.Name,
            Size = size,
            BytesRead = read,
            BytesWritten = written,
            BytesSkipped = size - written,
            BytesZeroed = zeroed,
            Duration = clock.Elapsed,
            SourceConnections = Source.Connections,
            DestinationConnections = destination.Connections,
            RequestSize = requestSize,
            DestinationCreated = created,
            Flushed = _options.Flush,
            SourceHash = sourceHash,
            DestinationHash = destinationHash,
            HashAlgorithm = _options.Verify ? _options.HashAlgorithm.Name : null,
        };
    }

    /// <summary>The caller's size, or 256 KiB (or the source server's preferred size if larger), capped by both maxima and aligned to both minima.</summary>
    internal static int ChooseRequestSize(IDisk source, IDisk destination, int requested)
    {
        int align = Math.Max(Math.Max(source.Alignment, destination.Alignment), 1);
        int size = requested > 0 ? requested : DiskCopyOptions.DefaultRequestSize;
        if (requested <= 0 && source is NbdDisk n && n.Client.PreferredBlockSize > size)
            size = n.Client.PreferredBlockSize;
        size = Math.Min(size, Math.Min(source.MaximumRequestSize, destination.MaximumRequestSize));
        return Math.Max(align, size / align * align);
    }

    private async Task CopyAsync(IDisk destination, long size, int requestSize, DiskProgress progress, CancellationToken ct)
    {
        var planner = new ChunkPlanner(Source, size, requestSize);
        int lanes = (int)Math.Clamp(Math.Min(Math.Max(Source.Parallelism, destination.Parallelism), BufferBudget / requestSize), 1, 64);
        _active = Enumerable.Repeat(long.MaxValue, lanes).ToArray();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var buffers = new byte[lanes][];
        try
        {
            var workers = new Task[lanes];
            for (int i = 0; i < lanes; i++)
            {
                int lane = i;
                buffers[i] = ArrayPool<byte>.Shared.Rent(requestSize);
                workers[i] = Task.Run(() => LaneAsync(lane, planner, destination, buffers[lane], progress, stop));
            }
            await Task.WhenAll(workers).ConfigureAwait(false);
        }
        finally
        {
            foreach (var b in buffers)
            {
                if (b is not null)
                    ArrayPool<byte>.Shared.Return(b);
            }
        }

        long done = progress.Done;
        long upTo = Math.Min(planner.Position, _active.Min());
        if (ct.IsCancellationRequested)
            throw new DiskOperationCanceledException(done, upTo,
                $"The copy to {destination.Name} was stopped after {Bytes(done)} ({done} bytes; everything before offset {upTo} is complete). The destination keeps what was written.", ct);
        if (_failure is { } f)
        {
            string what = f.Side == DiskSide.Source ? $"Reading {Source.Name}" : $"Writing {destination.Name}";
            throw new DiskIOException(f.Side, done, upTo,
                $"{what} failed after {Bytes(done)} of {Bytes(size)} were copied (everything before offset {upTo} is complete): {f.Error.Message}", f.Error);
        }
    }

    private async Task LaneAsync(int lane, ChunkPlanner planner, IDisk destination, byte[] buffer, DiskProgress progress, CancellationTokenSource stop)
    {
        var token = stop.Token;
        var side = DiskSide.Source;
        try
        {
            while (!token.IsCancellationRequested)
            {
                side = DiskSide.Source;
                var chunk = await planner.NextAsync(token).ConfigureAwait(false);
                if (chunk.IsEnd)
                    break;
                Volatile.Write(ref _active[lane], chunk.Offset);
                if (chunk.IsZero)
                {
                    side = DiskSide.Destination;
                    await ZeroAsync(destination, chunk.Offset, chunk.Length, progress, token).ConfigureAwait(false);
                }
                else
                {
                    var data = buffer.AsMemory(0, (int)chunk.Length);
                    await Source.ReadAsync(chunk.Offset, data, token).ConfigureAwait(false);
                    progress.AddRead(chunk.Length);
                    side = DiskSide.Destination;
                    await WriteAsync(destination, chunk.Offset, data, progress, token).ConfigureAwait(false);
                }
                progress.AddDone(chunk.Length);
                Volatile.Write(ref _active[lane], long.MaxValue);
            }
        }
        catch (Exception e)
        {
            lock (_failureLock)
                _failure ??= (side, e);
            stop.Cancel();
        }
    }

    /// <summary>Writes a data chunk; with sparse detection, runs of all-zero blocks become zero requests (or nothing).</summary>
    private async ValueTask WriteAsync(IDisk destination, long offset, ReadOnlyMemory<byte> data, DiskProgress progress, CancellationToken token)
    {
        int block = _options.SparseBlockSize;
        if (block <= 0)
        {
            await destination.WriteAsync(offset, data, token).ConfigureAwait(false);
            progress.AddWritten(data.Length);
            return;
        }
        int start = 0;
        while (start < data.Length)
        {
            bool zero = IsZeroBlock(data.Span, offset, start, block, out int end);
            while (end < data.Length && IsZeroBlock(data.Span, offset, end, block, out int next) == zero)
                end = next;
            if (zero)
                await ZeroAsync(destination, offset + start, end - start, progress, token).ConfigureAwait(false);
            else
            {
                await destination.WriteAsync(offset + start, data[start..end], token).ConfigureAwait(false);
                progress.AddWritten(end - start);
            }
            start = end;
        }
    }

    /// <summary>Whether the block at <paramref name="start"/> (blocks aligned to the disk offset) is all zeroes; <paramref name="end"/> is where it ends.</summary>
    private static bool IsZeroBlock(ReadOnlySpan<byte> data, long offset, int start, int block, out int end)
    {
        long absolute = offset + start;
        end = (int)Math.Min(data.Length, absolute / block * block + block - offset);
        return data[start..end].IndexOfAnyExcept((byte)0) < 0;
    }

    private static async ValueTask ZeroAsync(IDisk destination, long offset, long length, DiskProgress progress, CancellationToken token)
    {
        if (destination.IsZeroed)
            return;
        await destination.ZeroAsync(offset, length, token).ConfigureAwait(false);
        progress.AddZeroed(length);
    }

    internal static string Bytes(long n) => n switch
    {
        >= 1L << 40 => $"{n / (double)(1L << 40):0.#} TiB",
        >= 1L << 30 => $"{n / (double)(1L << 30):0.#} GiB",
        >= 1L << 20 => $"{n / (double)(1L << 20):0.#} MiB",
        >= 1L << 10 => $"{n / 1024.0:0.#} KiB",
        _ => $"{n} bytes",
    };

    public async ValueTask DisposeAsync()
    {
        await Source.DisposeAsync().ConfigureAwait(false);
        if (_destination is not null)
            await _destination.DisposeAsync().ConfigureAwait(false);
    }
}
