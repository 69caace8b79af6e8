using System.Diagnostics;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// What the kernel holds in the page cache for a file, and what the calling thread read from
/// storage: the independent evidence a test of "answer from the page cache or decline" needs.
/// </summary>
internal static class PageCacheProbe
{
    private const int ProtRead = 1, MapShared = 1, RusageThread = 1;

    /// <summary>
    /// Drops the whole file from the page cache and waits until mincore shows none of it resident:
    /// POSIX_FADV_DONTNEED skips pages it cannot take at that moment (locked, under writeback, held
    /// in another CPU's LRU batch), so one call is a request, not a guarantee.
    /// </summary>
    public static void Drop(string path, TimeSpan? timeout = null)
    {
        var deadline = Stopwatch.StartNew();
        var limit = timeout ?? TimeSpan.FromSeconds(10);
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read);
        while (true)
        {
            if (Libc.PosixFAdvise(file.SafeFileHandle, 0, 0, Libc.POSIX_FADV_DONTNEED) != 0)
                throw new IOException("posix_fadvise(DONTNEED) failed");
            long resident = ResidentPages(file);
            if (resident == 0)
                return;
            if (deadline.Elapsed > limit)
                throw new TimeoutException($"{resident} page(s) of {path} stayed in the page cache for {limit.TotalSeconds}s after POSIX_FADV_DONTNEED");
            Thread.Sleep(10);
        }
    }

    /// <summary>Pages of the file in the page cache (mincore over a shared mapping, which faults nothing in).</summary>
    public static long ResidentPages(FileStream file)
    {
        long length = file.Length;
        if (length == 0)
            return 0;
        nint map = mmap(0, (nuint)length, ProtRead, MapShared, (int)file.SafeFileHandle.DangerousGetHandle(), 0);
        if (map == -1)
            throw new IOException($"mmap failed: errno {Marshal.GetLastPInvokeError()}");
        try
        {
            long pageSize = Environment.SystemPageSize;
            var vector = new byte[(length + pageSize - 1) / pageSize];
            if (mincore(map, (nuint)length, vector) != 0)
                throw new IOException($"mincore failed: errno {Marshal.GetLastPInvokeError()}");
            return vector.LongCount(b => (b & 1) != 0);
        }
        finally
        {
            munmap(map, (nuint)length);
        }
    }

    /// <summary>
    /// 512-byte blocks the calling thread has read from storage (getrusage RUSAGE_THREAD ru_inblock:
    /// counted when the thread submits a read, readahead included).
    /// </summary>
    public static long ThreadBlocksRead()
    {
        // struct rusage on 64-bit Linux: two timevals (4 longs), then 14 longs; ru_inblock is the 8th of those.
        var usage = new long[18];
        if (getrusage(RusageThread, usage) != 0)
            throw new IOException($"getrusage failed: errno {Marshal.GetLastPInvokeError()}");
        return usage[11];
    }

    [DllImport("libc", SetLastError = true)]
    private static extern nint mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [DllImport("libc", SetLastError = true)]
    private static extern int munmap(nint address, nuint length);

    [DllImport("libc", SetLastError = true)]
    private static extern int mincore(nint address, nuint length, byte[] vector);

    [DllImport("libc", SetLastError = true)]
    private static extern int getrusage(int who, long[] usage);
}
