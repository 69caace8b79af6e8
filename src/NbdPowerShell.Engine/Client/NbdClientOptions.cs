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

    /// <summary>
    /// Ask for structured replies (NBD_OPT_STRUCTURED_REPLY) before entering transmission. Off by default because
    /// the kernel only understands simple replies: a connection handed to it must never negotiate them.
    /// Servers that refuse are used with simple replies (see <see cref="NbdNegotiatedConnection.StructuredReplies"/>).
    /// </summary>
    public bool StructuredReplies { get; init; }

    /// <summary>
    /// Meta contexts to select with NBD_OPT_SET_META_CONTEXT (e.g. "base:allocation" for BLOCK_STATUS).
    /// Only asked for when structured replies were agreed, which the spec requires for them.
    /// </summary>
    public IReadOnlyList<string> MetaContexts { get; init; } = [];
}
