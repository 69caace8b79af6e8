namespace NbdPowerShell.Engine.Kernel;

public sealed record AttachResult
{
    public required int Index { get; init; }
    public string Device => $"/dev/nbd{Index}";
    public required AttachMode Mode { get; init; }
    public required long Size { get; init; }
    public required int BlockSize { get; init; }
    public required int Connections { get; init; }
    public required bool IsReadOnly { get; init; }
    public string? BackendIdentifier { get; init; }
    /// <summary>The TLS relays of the connections (one each), owned by the caller; empty for plain connections.</summary>
    public IReadOnlyList<TlsRelay> Relays { get; init; } = [];
    /// <summary>True when the connections run over TLS through relays in this process.</summary>
    public bool IsTlsRelayed => Relays.Count > 0;
}
