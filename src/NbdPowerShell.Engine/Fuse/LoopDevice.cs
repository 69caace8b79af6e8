using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Win32.SafeHandles;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// The loop driver: binds a file to /dev/loopN (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, or LOOP_SET_FD +
/// LOOP_SET_STATUS64 on kernels before 5.8), unbinds it (LOOP_CLR_FD), and reads devices back from sysfs.
/// Ioctl numbers and struct layouts from &lt;linux/loop.h&gt;.
/// </summary>
internal static partial class LoopDevice
{
    private const nuint LOOP_SET_FD = 0x4C00;
    private const nuint LOOP_CLR_FD = 0x4C01;
    private const nuint LOOP_SET_STATUS64 = 0x4C04;
    private const nuint LOOP_SET_DIRECT_IO = 0x4C08;
    private const nuint LOOP_SET_BLOCK_SIZE = 0x4C09;
    private const nuint LOOP_CONFIGURE = 0x4C0A;
    private const nuint LOOP_CTL_GET_FREE = 0x4C82;

    private const uint LO_FLAGS_READ_ONLY = 1;
    private const uint LO_FLAGS_PARTSCAN = 8;
    private const uint LO_FLAGS_DIRECT_IO = 16;

    private const string ControlPath = "/dev/loop-control";
    private const string SysBlock = "/sys/block";
    private static int _modprobeTried;

    /// <summary>struct loop_info64 (232 bytes); only what we set is named.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 232)]
    internal unsafe struct LoopInfo64
    {
        [FieldOffset(52)] public uint Flags;
        [FieldOffset(56)] public fixed byte FileName[64];
    }

    /// <summary>struct loop_config (304 bytes): fd, block_size, loop_info64, reserved.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 304)]
    internal struct LoopConfig
    {
        [FieldOffset(0)] public uint Fd;
        [FieldOffset(4)] public uint BlockSize;
        [FieldOffset(8)] public LoopInfo64 Info;
    }

    /// <summary>
    /// Binds <paramref name="backingFile"/> to a free loop device and returns its index. Partitions are scanned
    /// (loopNpM); <paramref name="readOnly"/> makes the device read-only; <paramref name="directIo"/> asks for
    /// direct I/O on the backing file (the kernel drops it silently where the file cannot do it).
    /// </summary>
    public static int Attach(string backingFile, bool readOnly, bool directIo, int blockSize)
    {
        using var control = OpenControl();
        int access = readOnly ? Libc.O_RDONLY : Libc.O_RDWR;
        using var backing = Libc.OpenHandle(backingFile, access, out int errno)
            ?? throw new NbdFuseException($"Cannot open {backingFile} for the loop device: {Libc.StrError(errno)}.", errno);
        uint flags = LO_FLAGS_PARTSCAN | (readOnly ? LO_FLAGS_READ_ONLY : 0) | (directIo ? LO_FLAGS_DIRECT_IO : 0);

        // Another process may take the device GET_FREE named before we configure it: then EBUSY, and we ask again.
        for (int attempt = 0; attempt < 32; attempt++)
        {
            int index = Libc.IoctlValue(control, LOOP_CTL_GET_FREE, 0);
            if (index < 0)
            {
                errno = Libc.LastErrno;
                throw new NbdLoopUnavailableException($"No free loop device ({Libc.StrError(errno)}): detach one (losetup -d) or load the loop module with a larger max_loop.", errno);
            }
            using var device = OpenDevice(index, access);
            errno = Configure(device, backing, flags, blockSize, backingFile);
            if (errno == 0) return index;
            if (errno == Libc.EBUSY) continue;
            throw new NbdFuseException($"Binding {backingFile} to {DevicePath(index)} failed: {Libc.StrError(errno)}.", errno);
        }
        throw new NbdLoopUnavailableException("Loop devices kept being taken by other processes between LOOP_CTL_GET_FREE and binding; try again.");
    }

    /// <summary>LOOP_CONFIGURE (5.8+), else the older ioctl sequence; returns 0 or the errno.</summary>
    private static unsafe int Configure(SafeFileHandle device, SafeFileHandle backing, uint flags, int blockSize, string backingFile)
    {
        var config = new LoopConfig { Fd = (uint)backing.DangerousGetHandle(), BlockSize = (uint)blockSize };
        config.Info.Flags = flags;
        var name = Encoding.UTF8.GetBytes(backingFile);
        int nameLength = Math.Min(name.Length, 63);
        for (int i = 0; i < nameLength; i++) config.Info.FileName[i] = name[i];
        if (Libc.IoctlPointer(device, LOOP_CONFIGURE, &config) == 0) return 0;
        int errno = Libc.LastErrno;
        // Kernels before 5.8 answer an unknown loop ioctl with EINVAL (some with ENOTTY).
        if (errno is not (Libc.EINVAL or Libc.ENOTTY)) return errno;

        if (Libc.IoctlValue(device, LOOP_SET_FD, (nuint)backing.DangerousGetHandle()) != 0) return Libc.LastErrno;
        var info = config.Info;
        info.Flags = flags & LO_FLAGS_PARTSCAN; // read-only follows from the descriptor's mode; direct I/O has its own ioctl
        if (Libc.IoctlPointer(device, LOOP_SET_STATUS64, &info) != 0 || Libc.IoctlValue(device, LOOP_SET_BLOCK_SIZE, (nuint)blockSize) != 0)
        {
            errno = Libc.LastErrno;
            Libc.IoctlValue(device, LOOP_CLR_FD, 0);
            return errno;
        }
        if ((flags & LO_FLAGS_DIRECT_IO) != 0) Libc.IoctlValue(device, LOOP_SET_DIRECT_IO, 1); // best effort, like LOOP_CONFIGURE
        return 0;
    }

    /// <summary>
    /// LOOP_CLR_FD: the kernel unbinds the device when its last opener closes it (at once when nobody else has it
    /// open). A device that is already unbound, or being unbound, is left alone.
    /// </summary>
    public static void Detach(int index)
    {
        var device = Libc.OpenHandle(DevicePath(index), Libc.O_RDONLY, out int errno);
        if (device is null)
        {
            if (errno is Libc.ENXIO or Libc.ENOENT) return; // being torn down, or gone
            throw new NbdFuseException($"Cannot open {DevicePath(index)}: {Libc.StrError(errno)}.", errno);
        }
        using (device)
        {
            if (Libc.IoctlValue(device, LOOP_CLR_FD, 0) != 0 && (errno = Libc.LastErrno) != Libc.ENXIO)
                throw new NbdFuseException($"LOOP_CLR_FD on {DevicePath(index)} failed: {Libc.StrError(errno)}.", errno);
        }
    }

    /// <summary>True once /dev/loopN is unbound (its sysfs loop/ directory is gone).</summary>
    public static bool IsBound(int index) => Directory.Exists(Path.Combine(SysBlock, $"loop{index}", "loop"));

    public static async Task<bool> WaitUntilFreeAsync(int index, TimeSpan limit, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (IsBound(index))
        {
            if (clock.Elapsed > limit) return false;
            await Task.Delay(20, ct).ConfigureAwait(false);
        }
        return true;
    }

    public static string DevicePath(int index) => $"/dev/loop{index}";

    [GeneratedRegex(@"^loop(\d+)$")]
    private static partial Regex DeviceName();

    /// <summary>Every bound loop device, whoever bound it.</summary>
    public static IReadOnlyList<LoopDeviceInfo> List()
    {
        if (!Directory.Exists(SysBlock)) return [];
        var mounts = MountTable.Load();
        var result = new List<LoopDeviceInfo>();
        foreach (var entry in Directory.EnumerateFileSystemEntries(SysBlock))
        {
            var match = DeviceName().Match(Path.GetFileName(entry));
            if (match.Success && Describe(int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture), mounts) is { } info)
                result.Add(info);
        }
        return result.OrderBy(i => i.Index).ToList();
    }

    /// <summary>/dev/loopN as sysfs and the mount table show it; null when it is not bound.</summary>
    public static LoopDeviceInfo? Get(int index) => Describe(index, MountTable.Load());

    private static LoopDeviceInfo? Describe(int index, MountTable mounts)
    {
        string dir = Path.Combine(SysBlock, $"loop{index}");
        string? backing = ReadText(Path.Combine(dir, "loop", "backing_file"));
        if (backing is null) return null;
        var partitions = Directory.Exists(dir)
            ? Directory.EnumerateDirectories(dir, $"loop{index}p*").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList()
            : [];
        var mountPoints = new List<string>();
        var holders = new List<string>();
        foreach (var devDir in partitions.Select(p => Path.Combine(dir, p)).Prepend(dir))
        {
            var dev = ReadText(Path.Combine(devDir, "dev"))?.Split(':');
            if (dev is { Length: 2 } && int.TryParse(dev[0], CultureInfo.InvariantCulture, out int major) && int.TryParse(dev[1], CultureInfo.InvariantCulture, out int minor))
                mountPoints.AddRange(mounts.MountPointsOf(major, minor));
            string holdersDir = Path.Combine(devDir, "holders");
            if (Directory.Exists(holdersDir))
                holders.AddRange(Directory.EnumerateFileSystemEntries(holdersDir).Select(Path.GetFileName).OfType<string>());
        }
        return new LoopDeviceInfo
        {
            Index = index,
            Device = DevicePath(index),
            BackingFile = backing,
            Size = (ReadLong(Path.Combine(dir, "size")) ?? 0) * 512,
            BlockSize = (int)(ReadLong(Path.Combine(dir, "queue", "logical_block_size")) ?? 512),
            IsReadOnly = ReadLong(Path.Combine(dir, "ro")) == 1,
            DirectIo = ReadLong(Path.Combine(dir, "loop", "dio")) == 1,
            AutoClear = ReadLong(Path.Combine(dir, "loop", "autoclear")) == 1,
            DiscardMaxBytes = ReadLong(Path.Combine(dir, "queue", "discard_max_bytes")) ?? 0,
            MountPoints = mountPoints.Distinct().ToList(),
            Holders = holders.Distinct().Order(StringComparer.Ordinal).ToList(),
            Partitions = partitions,
        };
    }

    private static SafeFileHandle OpenControl()
    {
        var control = Libc.OpenHandle(ControlPath, Libc.O_RDWR, out int errno);
        if (control is null && errno == Libc.ENOENT && Interlocked.Exchange(ref _modprobeTried, 1) == 0)
        {
            // Like the nbd path: load the driver once if it is a module that is not loaded yet.
            try
            {
                using var p = Process.Start(new ProcessStartInfo("modprobe", "loop") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false });
                if (p is not null && !p.WaitForExit(15_000)) p.Kill();
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException) { }
            control = Libc.OpenHandle(ControlPath, Libc.O_RDWR, out errno);
        }
        return control ?? throw errno switch
        {
            Libc.EACCES or Libc.EPERM => new NbdPermissionDeniedException($"Cannot open {ControlPath} ({Libc.StrError(errno)}): binding loop devices must run as root.", errno),
            _ => new NbdLoopUnavailableException($"{ControlPath} is missing ({Libc.StrError(errno)}): load the loop driver (modprobe loop); in a container, run it with --privileged or pass the loop devices.", errno),
        };
    }

    /// <summary>Opens /dev/loopN, waiting briefly for devtmpfs/udev to create a node GET_FREE just added.</summary>
    private static SafeFileHandle OpenDevice(int index, int access)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var device = Libc.OpenHandle(DevicePath(index), access, out int errno);
            if (device is not null) return device;
            if (errno != Libc.ENOENT || clock.Elapsed > TimeSpan.FromSeconds(5))
                throw errno is Libc.EACCES or Libc.EPERM
                    ? new NbdPermissionDeniedException($"Cannot open {DevicePath(index)} ({Libc.StrError(errno)}): run as root.", errno)
                    : new NbdLoopUnavailableException($"Cannot open {DevicePath(index)}: {Libc.StrError(errno)}.", errno);
            Thread.Sleep(20);
        }
    }

    private static string? ReadText(string path)
    {
        try { return File.Exists(path) ? File.ReadAllText(path).Trim() : null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private static long? ReadLong(string path) =>
        long.TryParse(ReadText(path), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v : null;
}

/// <summary>One bound /dev/loopN, whoever bound it.</summary>
public sealed record LoopDeviceInfo
{
    public required int Index { get; init; }
    public required string Device { get; init; }
    /// <summary>sysfs loop/backing_file: the path of the file behind the device.</summary>
    public required string BackingFile { get; init; }
    public required long Size { get; init; }
    public required int BlockSize { get; init; }
    public required bool IsReadOnly { get; init; }
    /// <summary>The loop driver reads and writes the backing file with direct I/O (no second page cache).</summary>
    public required bool DirectIo { get; init; }
    /// <summary>Unbinds itself when its last opener closes it (set by LOOP_CLR_FD while it was open).</summary>
    public required bool AutoClear { get; init; }
    /// <summary>0 when the device takes no discards.</summary>
    public required long DiscardMaxBytes { get; init; }
    public IReadOnlyList<string> MountPoints { get; init; } = [];
    public IReadOnlyList<string> Holders { get; init; } = [];
    public IReadOnlyList<string> Partitions { get; init; } = [];
    public bool IsInUse => MountPoints.Count > 0 || Holders.Count > 0;
}
