using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// RUNTIME/fuse/: one mount point directory and one record file per attachment (ID/ and ID.json). RUNTIME is
/// NBDPOWERSHELL_RUNTIME_DIR or /run/nbdpowershell, so tests and a second service can use their own. Only what
/// lies directly in this directory is ever treated as ours.
/// </summary>
internal sealed class FuseRuntimeDirectory
{
    public const string RuntimeVariable = "NBDPOWERSHELL_RUNTIME_DIR";
    public const string DefaultRuntime = "/run/nbdpowershell";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public string Path { get; }

    public FuseRuntimeDirectory(string runtimeDirectory) =>
        Path = System.IO.Path.Combine(System.IO.Path.GetFullPath(runtimeDirectory), "fuse");

    public static string DefaultRuntimeDirectory =>
        Environment.GetEnvironmentVariable(RuntimeVariable) is { Length: > 0 } dir ? dir : DefaultRuntime;

    public string MountPointOf(string id) => System.IO.Path.Combine(Path, id);

    public string BackingFileOf(string id) => System.IO.Path.Combine(Path, id, FuseDiskServer.DiskFileName);

    private string RecordPathOf(string id) => System.IO.Path.Combine(Path, id + ".json");

    /// <summary>True for paths directly inside this directory: ID (a mount point) or ID/disk (a backing file).</summary>
    public bool TryGetId(string path, bool backingFile, out string id)
    {
        id = "";
        string? dir = backingFile ? System.IO.Path.GetDirectoryName(path) : path;
        if (backingFile && System.IO.Path.GetFileName(path) != FuseDiskServer.DiskFileName) return false;
        if (dir is null || System.IO.Path.GetDirectoryName(dir) != Path) return false;
        id = System.IO.Path.GetFileName(dir);
        return id.Length > 0;
    }

    /// <summary>Creates RUNTIME/fuse (mode 0700: the mount points are nobody else's business) and the mount point of <paramref name="id"/>.</summary>
    public string CreateMountPoint(string id)
    {
        if (!Directory.Exists(Path))
        {
            if (OperatingSystem.IsWindows()) throw new PlatformNotSupportedException("FUSE attachments exist on Linux only.");
            Directory.CreateDirectory(Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        string mountPoint = MountPointOf(id);
        Directory.CreateDirectory(mountPoint);
        return mountPoint;
    }

    /// <summary>Removes the (unmounted, empty) mount point and the record of <paramref name="id"/>; what is gone already is fine.</summary>
    public void Remove(string id)
    {
        try { Directory.Delete(MountPointOf(id)); }
        catch (DirectoryNotFoundException) { }
        catch (IOException) { } // still mounted (lazily) or not empty: leave it for the next cleanup
        File.Delete(RecordPathOf(id));
    }

    /// <summary>Writes the record atomically (temporary file, then rename), so a crash never leaves half a record.</summary>
    public void Save(FuseAttachmentRecord record)
    {
        string path = RecordPathOf(record.Id);
        string temporary = path + ".tmp";
        File.WriteAllText(temporary, JsonSerializer.Serialize(record, Json));
        File.Move(temporary, path, overwrite: true);
    }

    public FuseAttachmentRecord? Load(string id)
    {
        try { return JsonSerializer.Deserialize<FuseAttachmentRecord>(File.ReadAllText(RecordPathOf(id)), Json); }
        catch (FileNotFoundException) { return null; }
        catch (DirectoryNotFoundException) { return null; }
        catch (JsonException) { return null; } // unreadable: cleanup still finds the mount and loop device by path
    }

    public IReadOnlyList<FuseAttachmentRecord> LoadAll() =>
        RecordIds().Select(Load).OfType<FuseAttachmentRecord>().OrderBy(r => r.AttachedAt).ToList();

    public IEnumerable<string> RecordIds() =>
        Directory.Exists(Path)
            ? Directory.EnumerateFiles(Path, "*.json").Select(System.IO.Path.GetFileNameWithoutExtension).OfType<string>()
            : [];

    public IEnumerable<string> MountPointIds() =>
        Directory.Exists(Path) ? Directory.EnumerateDirectories(Path).Select(System.IO.Path.GetFileName).OfType<string>() : [];

    /// <summary>This process's start time in clock ticks since boot (/proc/self/stat field 22).</summary>
    public static long StartTimeOf(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            // The command name (field 2) is in parentheses and may contain spaces: count fields after the last ')'.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[19], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return -1;
        }
    }

    /// <summary>True when the process that wrote <paramref name="record"/> still runs (same pid and start time).</summary>
    public static bool IsOwnerAlive(FuseAttachmentRecord record) =>
        record.OwnerStartTime >= 0 && StartTimeOf(record.OwnerPid) == record.OwnerStartTime;
}
