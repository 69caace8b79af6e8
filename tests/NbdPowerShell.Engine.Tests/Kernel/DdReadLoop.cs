using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// Reads a whole block device with <c>dd iflag=direct bs=1M</c> (so every pass goes to the server, never the page
/// cache), over and over until told to stop. dd's output comes through a pipe to this process, which hashes each pass
/// and timestamps each MiB as it arrives: dd writes a block right after its read completed, so the arrival times show
/// when reads completed and how long dd stalled. Hashing runs on its own thread and the pipe holds a whole block, so
/// neither slows dd down (under emulation a 64 KiB pipe and inline SHA-256 tripled the time of a pass).
/// </summary>
internal sealed partial class DdReadLoop : IAsyncDisposable
{
    private const int Block = 1 << 20;
    /// <summary>F_SETPIPE_SZ (linux/fcntl.h).</summary>
    private const int F_SETPIPE_SZ = 1031;
    private readonly string _device;
    private readonly long _size;
    private readonly int _maxPasses;
    private readonly List<PassResult> _passes = new();
    private readonly List<DateTime> _chunkTimes = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private long _bytesInPass;
    private volatile bool _stopAfterPass;
    private Process? _dd;

    /// <param name="Number">0-based pass number.</param>
    /// <param name="Failed">dd failed, read short or printed an error: an I/O error the reader saw.</param>
    public sealed record PassResult(int Number, int ExitCode, long Bytes, byte[] Hash, string Stderr, DateTime Start, DateTime End, TimeSpan LongestStall)
    {
        public bool Failed(long size) => ExitCode != 0 || Bytes != size || Stderr.Contains("error", StringComparison.OrdinalIgnoreCase);
    }

    private DdReadLoop(string device, long size, int maxPasses)
    {
        _device = device;
        _size = size;
        _maxPasses = maxPasses;
        _loop = Task.Factory.StartNew(Run, TaskCreationOptions.LongRunning);
    }

    /// <summary>Starts reading; stops by itself after <paramref name="maxPasses"/> passes (or when told to).</summary>
    public static DdReadLoop Start(string device, long size, int maxPasses = int.MaxValue) => new(device, size, maxPasses);

    /// <summary>True once every pass has been read (the pass limit was reached or a stop was asked for).</summary>
    public bool IsFinished => _loop.IsCompleted;

    public IReadOnlyList<PassResult> Passes
    {
        get { lock (_passes) return _passes.ToArray(); }
    }

    public int CompletedPasses
    {
        get { lock (_passes) return _passes.Count; }
    }

    public long BytesInCurrentPass => Interlocked.Read(ref _bytesInPass);

    /// <summary>Bytes read over all passes so far.</summary>
    public long TotalBytes
    {
        get { lock (_chunkTimes) return (long)_chunkTimes.Count * Block; }
    }

    /// <summary>
    /// The longest wait between two blocks (the later one arriving between <paramref name="from"/> and
    /// <paramref name="to"/>): how long dd stalled around an event.
    /// </summary>
    public TimeSpan LongestGap(DateTime from, DateTime to)
    {
        lock (_chunkTimes)
        {
            var longest = TimeSpan.Zero;
            for (int i = 1; i < _chunkTimes.Count; i++)
                if (_chunkTimes[i] >= from && _chunkTimes[i] <= to && _chunkTimes[i] - _chunkTimes[i - 1] > longest)
                    longest = _chunkTimes[i] - _chunkTimes[i - 1];
            return longest;
        }
    }

    /// <summary>When every MiB arrived, in order, all passes together (UTC).</summary>
    public IReadOnlyList<DateTime> ChunkTimes
    {
        get { lock (_chunkTimes) return _chunkTimes.ToArray(); }
    }

    /// <summary>The first MiB that arrived after <paramref name="moment"/>; null when none did.</summary>
    public DateTime? FirstChunkAfter(DateTime moment)
    {
        lock (_chunkTimes) return _chunkTimes.FirstOrDefault(t => t > moment) is { Ticks: > 0 } t ? t : null;
    }

    /// <summary>Waits until <paramref name="condition"/> holds, failing after <paramref name="limit"/>.</summary>
    public async Task WaitUntilAsync(Func<DdReadLoop, bool> condition, TimeSpan limit, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition(this))
        {
            if (_loop.IsCompleted) throw new InvalidOperationException($"the dd loop ended while waiting for {what}: {(_loop.Exception?.ToString() ?? "no error")}");
            if (clock.Elapsed > limit) throw new TimeoutException($"waited {limit.TotalSeconds:0} s for {what}; passes so far: {string.Join(", ", Passes.Select(Describe))}");
            await Task.Delay(50);
        }
    }

    /// <summary>Lets the running pass finish, then stops; returns every pass.</summary>
    public async Task<IReadOnlyList<PassResult>> StopAfterCurrentPassAsync(TimeSpan limit)
    {
        _stopAfterPass = true;
        if (await Task.WhenAny(_loop, Task.Delay(limit)) != _loop)
            throw new TimeoutException($"the running dd pass did not finish within {limit.TotalSeconds:0} s ({BytesInCurrentPass} bytes read)");
        await _loop;
        return Passes;
    }

    public string Describe(PassResult p) =>
        $"pass {p.Number}: exit {p.ExitCode}, {p.Bytes} bytes in {(p.End - p.Start).TotalSeconds:0.0} s, stall {p.LongestStall.TotalSeconds:0.00} s{(p.Stderr.Length > 0 ? ", stderr: " + p.Stderr.Trim() : "")}";

    private void Run()
    {
        for (int pass = 0; pass < _maxPasses && !_stopAfterPass && !_stop.IsCancellationRequested; pass++)
        {
            var psi = new ProcessStartInfo(Peers.PeerServer.RequireBinary("dd"))
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            foreach (var a in new[] { $"if={_device}", "bs=1M", "iflag=direct", "status=none" }) psi.ArgumentList.Add(a);
            var start = DateTime.UtcNow;
            using var dd = Process.Start(psi)!;
            Volatile.Write(ref _dd, dd);
            var stderr = dd.StandardError.ReadToEndAsync();
            var output = dd.StandardOutput.BaseStream;
            if (output is System.IO.Pipes.PipeStream pipe)
                Engine.Interop.Libc.Fcntl((int)pipe.SafePipeHandle.DangerousGetHandle(), F_SETPIPE_SZ, Block);
            using var blocks = new BlockingCollection<(byte[] Buffer, int Length)>(boundedCapacity: 16);
            var hashing = Task.Factory.StartNew(() => Hash(blocks), TaskCreationOptions.LongRunning);
            Interlocked.Exchange(ref _bytesInPass, 0);
            long bytes = 0;
            var last = start;
            var stall = TimeSpan.Zero;
            try
            {
                while (true)
                {
                    var buffer = ArrayPool<byte>.Shared.Rent(Block);
                    int n = output.ReadAtLeast(buffer.AsSpan(0, Block), Block, throwOnEndOfStream: false);
                    if (n == 0)
                    {
                        ArrayPool<byte>.Shared.Return(buffer);
                        break;
                    }
                    var now = DateTime.UtcNow;
                    if (now - last > stall) stall = now - last;
                    last = now;
                    lock (_chunkTimes) _chunkTimes.Add(now);
                    blocks.Add((buffer, n));
                    bytes += n;
                    Interlocked.Exchange(ref _bytesInPass, bytes);
                    if (n < Block) break;
                }
            }
            finally { blocks.CompleteAdding(); }
            dd.WaitForExit();
            var result = new PassResult(pass, dd.ExitCode, bytes, hashing.Result, stderr.Result, start, DateTime.UtcNow, stall);
            lock (_passes) _passes.Add(result);
        }
    }

    private static byte[] Hash(BlockingCollection<(byte[] Buffer, int Length)> blocks)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (buffer, length) in blocks.GetConsumingEnumerable())
        {
            sha.AppendData(buffer, 0, length);
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return sha.GetHashAndReset();
    }

    /// <summary>Kernel log lines that report an I/O error on the device ("I/O error, dev nbd3, sector ...").</summary>
    public static int KernelIoErrors(string device)
    {
        var (_, log) = KernelTestTools.Run("dmesg");
        string name = Path.GetFileName(device);
        return log.Split('\n').Count(line => IoErrorLine().IsMatch(line) && line.Contains($"dev {name},", StringComparison.Ordinal));
    }

    [GeneratedRegex(@"I/O error, dev nbd\d+,")]
    private static partial Regex IoErrorLine();

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _stopAfterPass = true;
        try { Volatile.Read(ref _dd)?.Kill(); } catch (InvalidOperationException) { }
        try { await _loop.WaitAsync(TimeSpan.FromSeconds(60)); } catch (Exception e) when (e is TimeoutException or InvalidOperationException or IOException) { }
        _stop.Dispose();
    }
}
