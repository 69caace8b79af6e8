using System.Security.Cryptography;
using NbdPowerShell.Engine.Fuse;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>
/// One test's private world: a temp directory as NBDPOWERSHELL_RUNTIME_DIR-equivalent, an attacher on it, and the
/// ext4 mounts the test made. Disposing unmounts those, detaches (forced) whatever is still attached, cleans the
/// runtime directory and asserts that nothing of this test is left in the mount table or the loop devices, so a
/// failing test cannot leak a mount into the next one, and no test touches another's mounts or loop devices.
/// </summary>
internal sealed class FuseTestScope : IAsyncDisposable
{
    /// <summary>FILE_FLAG_NO_BUFFERING, which .NET on Linux turns into O_DIRECT.</summary>
    private const FileOptions NoBuffering = (FileOptions)0x20000000;

    private readonly List<string> _mounts = new();

    public FuseTestScope()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("nbdps-fuse-").FullName;
        RuntimeDirectory = Path.Combine(Directory, "run");
        Attacher = new FuseAttacher(RuntimeDirectory);
    }

    public string Directory { get; }
    public string RuntimeDirectory { get; }
    public FuseAttacher Attacher { get; }

    /// <summary>Mounts <paramref name="device"/> (ext4) on a fresh directory of this scope and returns it.</summary>
    public string MountExt4(string device, bool readOnly = false)
    {
        string target = System.IO.Directory.CreateDirectory(Path.Combine(Directory, $"mnt{_mounts.Count}")).FullName;
        RunOk("mount", "-t", "ext4", "-o", readOnly ? "ro" : "rw", device, target);
        _mounts.Add(target);
        return target;
    }

    public void Unmount(string target)
    {
        RunOk("umount", target);
        _mounts.Remove(target);
    }

    /// <summary>Lines of /proc/self/mountinfo and `losetup -a` that mention this scope's directory.</summary>
    public IReadOnlyList<string> Leftovers()
    {
        var lines = File.ReadAllLines("/proc/self/mountinfo").Where(l => l.Contains(Directory, StringComparison.Ordinal)).ToList();
        lines.AddRange(Run("losetup", "-a").Output.Split('\n').Where(l => l.Contains(Directory, StringComparison.Ordinal)));
        return lines;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var target in _mounts)
            if (Run("umount", target).Code != 0) Run("umount", "-l", target);
        await Attacher.DisposeAsync();
        await new FuseAttacher(RuntimeDirectory).CleanUpAsync(force: true);
        var left = Leftovers();
        if (left.Count == 0)
            System.IO.Directory.Delete(Directory, recursive: true);
        Assert.True(left.Count == 0, "the test left mounts or loop devices behind:\n" + string.Join("\n", left));
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/> of a block device with O_DIRECT and fsync.</summary>
    public static void WriteDevice(string device, long offset, byte[] data)
    {
        using var handle = File.OpenHandle(device, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.WriteThrough | NoBuffering);
        RandomAccess.Write(handle, Aligned(data).Span, offset);
        RandomAccess.FlushToDisk(handle);
    }

    /// <summary>Reads <paramref name="length"/> bytes at <paramref name="offset"/> with O_DIRECT, so the page cache cannot answer.</summary>
    public static byte[] ReadDevice(string device, long offset, int length)
    {
        using var handle = File.OpenHandle(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, NoBuffering);
        var buffer = AlignedBuffer(length);
        int done = 0;
        while (done < length)
        {
            int n = RandomAccess.Read(handle, buffer.Span[done..length], offset + done);
            Assert.True(n > 0, $"{device} ended at {offset + done}");
            done += n;
        }
        return buffer.Span[..length].ToArray();
    }

    public static string Sha(byte[] data) => Convert.ToHexString(SHA256.HashData(data));

    // O_DIRECT wants page-aligned memory: a pinned array sliced at the next page boundary.
    private static Memory<byte> AlignedBuffer(int length)
    {
        var raw = GC.AllocateArray<byte>(length + 4096, pinned: true);
        unsafe
        {
            fixed (byte* p = raw)
            {
                int skip = (int)((4096 - ((nint)p & 4095)) & 4095);
                return raw.AsMemory(skip, length);
            }
        }
    }

    private static ReadOnlyMemory<byte> Aligned(byte[] data)
    {
        var buffer = AlignedBuffer(data.Length);
        data.CopyTo(buffer);
        return buffer;
    }
}
