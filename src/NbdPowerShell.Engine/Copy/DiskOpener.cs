namespace NbdPowerShell.Engine.Copy;

/// <summary>Opens the disk a <see cref="DiskLocation"/> names, for reading.</summary>
public static class DiskOpener
{
    /// <summary>
    /// Connects to an export (with up to <see cref="DiskCopyOptions.Connections"/> connections) or opens a local
    /// file or block device read-only. Failures throw the client's exceptions (unreachable server, unknown export,
    /// TLS) or FileNotFoundException/UnauthorizedAccessException/StorageException for local paths.
    /// </summary>
    public static async Task<IDisk> OpenForReadingAsync(DiskLocation location, DiskCopyOptions options, CancellationToken ct)
    {
        if (location.Uri is { } uri)
            return await NbdDisk.OpenAsync(uri, options.Connections, options.Client, ct).ConfigureAwait(false);
        return LocalDisk.Open(location.Path!, writable: false);
    }
}
