using System.Text.Json;

namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// What Connect-NbdDevice asks a host for: an export (by URI, or an export of the host itself), how to reach it,
/// and how the device should look. Kinds read the fields they support and may take extras from <see cref="Options"/>.
/// </summary>
public sealed record DeviceRequest
{
    /// <summary>The device kind that attaches it, e.g. "kernel".</summary>
    public string Kind { get; init; } = Kernel.KernelDeviceKind.KindName;
    /// <summary>The export's NBD URIs (nbd://, nbds://, nbd+unix://); more than one is a failover list where a kind supports it.</summary>
    public IReadOnlyList<string> Uris { get; init; } = [];
    /// <summary>An export served by the attaching host itself, reached over an in-process socketpair; then <see cref="Uris"/> holds its URI for display.</summary>
    public string? LocalExport { get; init; }
    public ClientTlsSpec? Tls { get; init; }
    public bool ReadOnly { get; init; }
    public int? Index { get; init; }
    public int? BlockSize { get; init; }
    public int? TimeoutSeconds { get; init; }
    public int? DeadConnectionTimeoutSeconds { get; init; }
    public int Connections { get; init; } = 1;
    /// <summary>Kept in the service's configuration and taken back after a restart (service only).</summary>
    public bool Persistent { get; init; }
    /// <summary>Attach another device even when this export is attached already.</summary>
    public bool NewDevice { get; init; }
    /// <summary>Kind-specific extras, opaque to the host.</summary>
    public JsonElement? Options { get; init; }

    /// <summary>The first URI, parsed.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public Client.NbdUri PrimaryUri =>
        Uris.Count > 0 ? Client.NbdUri.Parse(Uris[0]) : throw new ArgumentException("A device request needs the export's URI.");

    public void Validate()
    {
        if (Uris.Count == 0)
            throw new ArgumentException("A device request needs the export's URI.");
        foreach (var uri in Uris)
            if (!Client.NbdUri.TryParse(uri, out _, out var error))
                throw new ArgumentException($"'{uri}' is not an NBD URI: {error}");
        if (Connections is < 1 or > 16)
            throw new ArgumentException("Connections must be 1..16.");
        Tls?.Validate();
    }

    /// <summary>True when both name the same export: the same server (host and port, or socket) and export name.</summary>
    public static bool SameExport(Client.NbdUri a, Client.NbdUri b) =>
        a.IsUnix == b.IsUnix
        && string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase)
        && a.Port == b.Port
        && a.SocketPath == b.SocketPath
        && a.ExportName == b.ExportName;
}
