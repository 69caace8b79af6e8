using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Copy;

/// <summary>Where a disk is: an NBD export (by URI) or a local regular file or block device (by absolute path).</summary>
public sealed record DiskLocation
{
    private DiskLocation(NbdUri? uri, string? path)
    {
        Uri = uri;
        Path = path;
    }

    /// <summary>The export's URI; null for local paths.</summary>
    public NbdUri? Uri { get; }

    /// <summary>The absolute local path; null for NBD exports.</summary>
    public string? Path { get; }

    public bool IsNbd => Uri is not null;

    public static DiskLocation ForNbd(NbdUri uri) => new(uri ?? throw new ArgumentNullException(nameof(uri)), null);

    /// <summary>A local file or block device; relative paths are made absolute against the process's directory.</summary>
    public static DiskLocation ForPath(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new(null, System.IO.Path.GetFullPath(path));
    }

    /// <summary>True when <paramref name="text"/> starts with an NBD scheme (nbd://, nbds://, nbd+unix://, nbds+unix://).</summary>
    public static bool LooksLikeNbdUri(string text) =>
        text.StartsWith("nbd://", StringComparison.OrdinalIgnoreCase) || text.StartsWith("nbds://", StringComparison.OrdinalIgnoreCase)
        || text.StartsWith("nbd+unix://", StringComparison.OrdinalIgnoreCase) || text.StartsWith("nbds+unix://", StringComparison.OrdinalIgnoreCase);

    /// <summary>An NBD URI (parsed strictly: a malformed one throws FormatException) or else a local path.</summary>
    public static DiskLocation Parse(string text) =>
        LooksLikeNbdUri(text) ? ForNbd(NbdUri.Parse(text)) : ForPath(text);

    public override string ToString() => Uri?.ToString() ?? Path!;
}
