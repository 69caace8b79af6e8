namespace NbdPowerShell.Engine.Client;

public sealed record NbdClientOptions
{
    public static NbdClientOptions Default { get; } = new();

    /// <summary>Limit for connecting plus negotiating (not for later I/O). Infinite disables it.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Ask for NBD_INFO_BLOCK_SIZE during INFO/GO. Asking promises to honour the constraints.</summary>
    public bool RequestBlockSize { get; init; } = true;

    /// <summary>Use NBD_OPT_EXPORT_NAME directly instead of GO (old servers, or tests of the fallback).</summary>
    public bool ForceExportName { get; init; }

    /// <summary>TLS settings; when set (or the URI is nbds://) the client insists on STARTTLS. Null means plaintext.</summary>
    public NbdClientTlsOptions? Tls { get; init; }
}
