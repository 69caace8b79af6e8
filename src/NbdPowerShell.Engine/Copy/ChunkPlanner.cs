using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Copy;

/// <summary>A piece of the source to copy or hash: data to read, or a range that reads as zeroes (hole or zero extent).</summary>
internal readonly record struct Chunk(long Offset, long Length, bool IsZero)
{
    public static Chunk End => default;
    public bool IsEnd => Length == 0;
}

/// <summary>
/// Walks a disk's extents from offset 0 to a given length and hands out chunks in offset order: data cut at
/// multiples of the request size, zero ranges whole. Extents are fetched a window at a time, the next window in
/// the background while the current one is consumed, so workers rarely wait for the map. Safe for many workers.
/// </summary>
internal sealed class ChunkPlanner
{
    /// <summary>Block status asked per request: large enough for few round trips, small enough to start at once.</summary>
    private const long Window = 256L << 20;

    private readonly IDisk _disk;
    private readonly long _length;
    private readonly int _requestSize;
    private readonly object _lock = new();
    private readonly List<Extent> _extents = new();   // fetched and not yet handed out, from _head on
    private readonly List<Extent> _fetched = new();
    private int _head;
    private long _headUsed;      // bytes of _extents[_head] already handed out
    private long _queuedBytes;   // bytes not yet handed out
    private long _position;      // start of the first queued extent (where the next chunk begins)
    private long _mappedTo;      // end of what has been fetched
    private Task? _fetch;
    private Exception? _fetchFailure;

    public ChunkPlanner(IDisk disk, long length, int requestSize)
    {
        _disk = disk;
        _length = length;
        _requestSize = requestSize;
    }

    /// <summary>Where the next chunk will begin: everything before it has been handed out.</summary>
    public long Position
    {
        get { lock (_lock) return _position; }
    }

    /// <summary>The next chunk, or <see cref="Chunk.End"/> when the range is done. Throws the extent query's failure.</summary>
    public async ValueTask<Chunk> NextAsync(CancellationToken ct)
    {
        while (true)
        {
            Task fetch;
            lock (_lock)
            {
                if (_fetchFailure is not null)
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(_fetchFailure);
                if (TryTake(out var chunk))
                {
                    if (_queuedBytes < Window / 2 && _fetch is null && _mappedTo < _length)
                        _fetch = FetchAsync(ct);
                    return chunk;
                }
                if (_position >= _length)
                    return Chunk.End;
                fetch = _fetch ??= FetchAsync(ct);
            }
            await fetch.ConfigureAwait(false);
        }
    }

    private bool TryTake(out Chunk chunk)
    {
        chunk = default;
        if (_head == _extents.Count)
            return false;
        var e = _extents[_head];
        bool zero = e.Flags == ExtentFlags.Zero;
        long take = e.Length - _headUsed;
        if (!zero)
        {
            // Cut data at multiples of the request size so requests stay aligned to it.
            long boundary = (_position / _requestSize + 1) * _requestSize;
            take = Math.Min(take, boundary - _position);
        }
        chunk = new Chunk(_position, take, zero);
        _position += take;
        _queuedBytes -= take;
        _headUsed += take;
        if (_headUsed == e.Length)
        {
            _head++;
            _headUsed = 0;
            if (_head == _extents.Count || _head > 4096)
            {
                _extents.RemoveRange(0, _head); // keep the list from growing with what was handed out
                _head = 0;
            }
        }
        return true;
    }

    private async Task FetchAsync(CancellationToken ct)
    {
        // Let the caller return before the query runs (it may complete synchronously for local disks).
        await Task.Yield();
        long from;
        lock (_lock)
            from = _mappedTo;
        try
        {
            _fetched.Clear();
            long want = Math.Min(Window, _length - from);
            await _disk.GetExtentsAsync(from, want, _fetched, ct).ConfigureAwait(false);
            lock (_lock)
            {
                long at = from;
                foreach (var e in _fetched)
                {
                    long length = Math.Min(e.Length, _length - at);
                    if (length <= 0)
                        break;
                    Append(new Extent(length, e.Flags));
                    at += length;
                }
                if (at == from)
                    throw new InvalidDataException($"{_disk.Name} described no extent at offset {from}.");
                _mappedTo = at;
                _fetch = null;
            }
        }
        catch (Exception e)
        {
            lock (_lock)
            {
                _fetchFailure = e;
                _fetch = null;
            }
        }
    }

    private void Append(Extent e)
    {
        // Zero-flagged extents carry no data to read, whatever the hole bit says; neighbours of one kind merge.
        var flags = e.Flags.HasFlag(ExtentFlags.Zero) ? ExtentFlags.Zero : ExtentFlags.Data;
        _queuedBytes += e.Length;
        if (_extents.Count > _head && _extents[^1].Flags == flags)
            _extents[^1] = new Extent(_extents[^1].Length + e.Length, flags);
        else
            _extents.Add(new Extent(e.Length, flags));
    }
}
