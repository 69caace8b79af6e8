using System.Globalization;
using System.Text;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>Mounts from /proc/self/mountinfo, keyed by the block device's major:minor (field 3).</summary>
public sealed class MountTable
{
    public sealed record Entry(int Major, int Minor, string MountPoint, string Source);

    public IReadOnlyList<Entry> Entries { get; }

    private MountTable(IReadOnlyList<Entry> entries) => Entries = entries;

    public static MountTable Load(string path = "/proc/self/mountinfo") =>
        Parse(File.Exists(path) ? File.ReadAllText(path) : "");

    /// <summary>
    /// Format: "id parent major:minor root mountpoint options [optional...] - fstype source superopts".
    /// Paths escape space, tab, newline and backslash as \ooo octal.
    /// </summary>
    public static MountTable Parse(string text)
    {
        var entries = new List<Entry>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split(' ');
            if (fields.Length < 5) continue;
            var dev = fields[2].Split(':');
            if (dev.Length != 2 || !int.TryParse(dev[0], CultureInfo.InvariantCulture, out int major) || !int.TryParse(dev[1], CultureInfo.InvariantCulture, out int minor)) continue;
            int dash = Array.IndexOf(fields, "-", 6);
            string source = dash > 0 && dash + 2 < fields.Length ? Unescape(fields[dash + 2]) : "";
            entries.Add(new Entry(major, minor, Unescape(fields[4]), source));
        }
        return new MountTable(entries);
    }

    public IReadOnlyList<string> MountPointsOf(int major, int minor) =>
        Entries.Where(e => e.Major == major && e.Minor == minor).Select(e => e.MountPoint).ToList();

    internal static string Unescape(string value)
    {
        if (!value.Contains('\\')) return value;
        var bytes = new List<byte>();
        for (int i = 0; i < value.Length; i++)
        {
            if (value[i] == '\\' && IsOctal(value, i + 1))
            {
                bytes.Add((byte)Convert.ToInt32(value.Substring(i + 1, 3), 8));
                i += 3;
            }
            else bytes.AddRange(Encoding.UTF8.GetBytes(value[i].ToString()));
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    private static bool IsOctal(string s, int at) =>
        at + 3 <= s.Length && s[at] is >= '0' and <= '3' && s[at + 1] is >= '0' and <= '7' && s[at + 2] is >= '0' and <= '7';
}
