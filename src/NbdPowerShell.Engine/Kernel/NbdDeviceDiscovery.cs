using System.Globalization;
using System.Text.RegularExpressions;
using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// Enumerates /sys/block/nbd* and describes each device. Roots are injectable so tests can use a fake tree.
/// Connected state comes from netlink STATUS when available; the pid file is the fallback (it only proves
/// liveness for ioctl devices, whose DO_IT caller is the pid).
/// </summary>
public sealed partial class NbdDeviceDiscovery
{
    private readonly string _sysRoot;
    private readonly string _procMountInfo;
    private readonly INbdStatusProvider? _statusProvider;
    private readonly string _devRoot;

    public NbdDeviceDiscovery(string sysRoot = "/sys", string procMountInfo = "/proc/self/mountinfo",
        INbdStatusProvider? statusProvider = null, string devRoot = "/dev")
    {
        _sysRoot = sysRoot;
        _procMountInfo = procMountInfo;
        _statusProvider = statusProvider;
        _devRoot = devRoot;
    }

    /// <summary>Discovery against the real system, asking the kernel over netlink for connected state.</summary>
    public static NbdDeviceDiscovery System() => new(statusProvider: new NetlinkStatusProvider());

    [GeneratedRegex(@"^nbd(\d+)$")]
    private static partial Regex DeviceName();

    public IReadOnlyList<NbdDeviceInfo> GetDevices()
    {
        string block = Path.Combine(_sysRoot, "block");
        if (!Directory.Exists(block)) return [];
        var indexes = Directory.EnumerateFileSystemEntries(block)
            .Select(p => DeviceName().Match(Path.GetFileName(p)))
            .Where(m => m.Success)
            .Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture))
            .Order()
            .ToList();
        var status = _statusProvider?.GetStatus();
        var mounts = MountTable.Load(_procMountInfo);
        return indexes.Select(i => Describe(i, status, mounts)).ToList();
    }

    public NbdDeviceInfo? GetDevice(int index)
    {
        if (!Directory.Exists(DeviceDir(index))) return null;
        return Describe(index, _statusProvider?.GetStatus(), MountTable.Load(_procMountInfo));
    }

    internal string DeviceDir(int index) => Path.Combine(_sysRoot, "block", $"nbd{index}");

    private NbdDeviceInfo Describe(int index, IReadOnlyDictionary<int, bool>? status, MountTable mounts)
    {
        string dir = DeviceDir(index);
        long sectors = ReadLong(Path.Combine(dir, "size")) ?? 0;
        int? pid = (int?)ReadLong(Path.Combine(dir, "pid"));
        string? backend = ReadText(Path.Combine(dir, "backend"));
        bool hasBackendFile = File.Exists(Path.Combine(dir, "backend"));
        if (string.IsNullOrEmpty(backend)) backend = null;

        bool connected = status is not null && status.TryGetValue(index, out bool c) ? c : pid is not null;
        AttachMode? mode = !connected ? null : hasBackendFile ? AttachMode.Netlink : pid is not null ? AttachMode.Ioctl : null;

        var partitions = Directory.Exists(dir)
            ? Directory.EnumerateDirectories(dir, $"nbd{index}p*").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList()
            : [];
        var mountPoints = new List<string>();
        var holders = new List<string>(ListNames(Path.Combine(dir, "holders")));
        foreach (var devDir in partitions.Select(p => Path.Combine(dir, p)).Prepend(dir))
        {
            if (ReadDevNumber(Path.Combine(devDir, "dev")) is var (major, minor))
                mountPoints.AddRange(mounts.MountPointsOf(major, minor));
            if (devDir != dir) holders.AddRange(ListNames(Path.Combine(devDir, "holders")));
        }

        int? connections = null;
        string mq = Path.Combine(dir, "mq");
        if (connected && Directory.Exists(mq)) connections = Directory.EnumerateDirectories(mq).Count();
        int? timeout = connected ? (int?)ReadLong(Path.Combine(_sysRoot, "kernel", "debug", "nbd", $"nbd{index}", "timeout")) : null;

        NbdUri.TryParse(backend, out var uri);
        return new NbdDeviceInfo
        {
            Device = Path.Combine(_devRoot, $"nbd{index}"),
            Index = index,
            IsConnected = connected,
            Size = connected ? sectors * 512 : 0,
            BlockSize = (int)(ReadLong(Path.Combine(dir, "queue", "logical_block_size")) ?? 512),
            IsReadOnly = ReadLong(Path.Combine(dir, "ro")) == 1,
            BackendIdentifier = backend,
            Uri = uri,
            Connections = connections,
            TimeoutSeconds = timeout,
            MountPoints = mountPoints.Distinct().ToList(),
            Holders = holders.Distinct().ToList(),
            Partitions = partitions,
            Pid = pid,
            Mode = mode,
            IsOwnedByThisProcess = IoctlSession.Find(index) is not null,
        };
    }

    private static IEnumerable<string> ListNames(string dir) =>
        Directory.Exists(dir) ? Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal) : [];

    private static string? ReadText(string path)
    {
        try { return File.Exists(path) ? File.ReadAllText(path).Trim() : null; }
        catch (IOException) { return null; }        // the file vanished between the check and the read
        catch (UnauthorizedAccessException) { return null; }
    }

    private static long? ReadLong(string path) =>
        long.TryParse(ReadText(path), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v : null;

    private static (int Major, int Minor)? ReadDevNumber(string path)
    {
        var parts = ReadText(path)?.Split(':');
        return parts is { Length: 2 } && int.TryParse(parts[0], CultureInfo.InvariantCulture, out int major) && int.TryParse(parts[1], CultureInfo.InvariantCulture, out int minor)
            ? (major, minor) : null;
    }
}
