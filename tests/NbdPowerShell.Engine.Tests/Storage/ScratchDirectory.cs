namespace NbdPowerShell.Engine.Tests.Storage;

/// <summary>A private directory under the system temp path, removed with everything in it.</summary>
internal sealed class ScratchDirectory : IDisposable
{
    public ScratchDirectory(string? parent = null)
    {
        Path = System.IO.Path.Combine(parent ?? System.IO.Path.GetTempPath(), "nbd-storage-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>A file of <paramref name="size"/> bytes with no data blocks.</summary>
    public string SparseFile(string name, long size)
    {
        string path = File(name);
        using var fs = new FileStream(path, FileMode.CreateNew);
        fs.SetLength(size);
        return path;
    }

    /// <summary>Targets of this process's descriptors that lie in <paramref name="directory"/>, deleted or not.</summary>
    public static List<string> OpenDescriptorsUnder(string directory)
    {
        var found = new List<string>();
        foreach (string fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                string? target = new FileInfo(fd).LinkTarget;
                if (target is not null && target.StartsWith(directory + "/", StringComparison.Ordinal))
                    found.Add(target);
            }
            catch (IOException)
            {
            }
        }
        return found;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
