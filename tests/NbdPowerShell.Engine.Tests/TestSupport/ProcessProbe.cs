namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>Process-wide figures read from /proc and the GC.</summary>
internal static class ProcessProbe
{
    /// <summary>Descriptors of this process that are open on <paramref name="path"/>.</summary>
    public static int OpenDescriptorsOn(string path)
    {
        string full = Path.GetFullPath(path);
        int count = 0;
        foreach (var fd in Directory.EnumerateFiles("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget == full)
                    count++;
            }
            catch (IOException) { } // closed while we looked
            catch (UnauthorizedAccessException) { }
        }
        return count;
    }

    public static int ThreadCount()
    {
        using var p = System.Diagnostics.Process.GetCurrentProcess();
        return p.Threads.Count;
    }

    /// <summary>Managed heap after a full, compacting collection.</summary>
    public static long HeapBytes()
    {
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        return GC.GetTotalMemory(forceFullCollection: false);
    }

    /// <summary>Polls until <paramref name="condition"/> holds or the time is up.</summary>
    public static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > until)
                return false;
            Thread.Sleep(10);
        }
        return true;
    }
}
