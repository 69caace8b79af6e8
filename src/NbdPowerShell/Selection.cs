using System.Management.Automation;
using System.Text.RegularExpressions;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell;

/// <summary>
/// Turns -Name and -Device arguments into the objects they select. Wildcard misses are silent; other misses
/// write ObjectNotFound errors (the convention of Get-* cmdlets).
/// </summary>
internal static partial class Selection
{
    [GeneratedRegex(@"^(?:/dev/)?nbd(\d+)$")]
    private static partial Regex DeviceArgument();

    /// <summary>Accepts /dev/nbd3, nbd3 or 3; null when it is none of those.</summary>
    public static int? ParseDevice(string text)
    {
        text = text.Trim();
        if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int bare))
            return bare;
        var m = DeviceArgument().Match(text);
        return m.Success && int.TryParse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture, out int index) ? index : null;
    }

    /// <summary>
    /// The items whose name matches any of <paramref name="names"/> (wildcards, case-insensitive), each once,
    /// in the order of <paramref name="candidates"/>; a plain name that matches nothing writes NbdExportNotFound.
    /// </summary>
    public static List<T> ByName<T>(NbdCmdlet cmdlet, IEnumerable<string> names, IReadOnlyList<T> candidates, Func<T, string> nameOf, string missing)
    {
        var chosen = new List<T>();
        foreach (string name in names)
        {
            var pattern = new WildcardPattern(name, WildcardOptions.IgnoreCase);
            var matches = candidates.Where(c => pattern.IsMatch(nameOf(c))).ToList();
            if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(name))
                cmdlet.WriteNbdError(ErrorIds.ExportNotFound, string.Format(System.Globalization.CultureInfo.InvariantCulture, missing, name), name);
            chosen.AddRange(matches.Where(m => !chosen.Contains(m)));
        }
        return chosen;
    }

    /// <summary>
    /// -Device/-Index filtering over <paramref name="candidates"/>: wildcard misses are silent, other misses are
    /// NbdDeviceNotFound errors that say whether the device exists at all (<paramref name="existing"/>) or is just not <paramref name="what"/>.
    /// </summary>
    public static IEnumerable<T> Devices<T>(NbdCmdlet cmdlet, IReadOnlyList<T> candidates, IReadOnlyCollection<int> existing,
        string[]? device, int[]? index, string what, Func<T, int> indexOf, Func<T, string> deviceOf)
    {
        if (device is null && index is null)
            return candidates;
        var chosen = new List<T>();
        foreach (string d in device ?? [])
        {
            if (WildcardPattern.ContainsWildcardCharacters(d))
            {
                var pattern = new WildcardPattern(d, WildcardOptions.IgnoreCase);
                chosen.AddRange(candidates.Where(c => pattern.IsMatch(deviceOf(c)) || pattern.IsMatch($"nbd{indexOf(c)}")));
                continue;
            }
            var i = ParseDevice(d);
            // By number for nbd devices; by exact node for the others (a FUSE device's /dev/loopN).
            var match = candidates.Where(c => (i is not null && indexOf(c) == i) || deviceOf(c) == d.Trim()).ToList();
            if (match.Count == 0)
                cmdlet.WriteNotFound(d, i is int e && existing.Contains(e) ? $"{d} is not {what}." : $"{d} is not an nbd device on this machine; Get-NbdDevice lists them.");
            chosen.AddRange(match);
        }
        foreach (int i in index ?? [])
        {
            var match = candidates.Where(c => indexOf(c) == i).ToList();
            if (match.Count == 0)
                cmdlet.WriteNotFound($"/dev/nbd{i}", existing.Contains(i) ? $"/dev/nbd{i} is not {what}." : $"/dev/nbd{i} is not an nbd device on this machine; Get-NbdDevice lists them.");
            chosen.AddRange(match);
        }
        return chosen.DistinctBy(deviceOf);
    }
}
