using System.Text.Json;
using System.Text.Json.Serialization;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// Everything needed to supervise one attached device, in a form a host can persist (JSON via <see cref="ToJson"/>)
/// and hand to <see cref="DeviceSupervisor.AdoptAsync"/> after it restarts. <see cref="Index"/> and
/// <see cref="BackendIdentifier"/> tie it to the kernel's device; the rest says which servers are acceptable.
/// </summary>
public sealed record SupervisionRecord
{
    public const int CurrentFormatVersion = 1;

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter() },
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>Version of this record's layout; a host refuses records from a newer version.</summary>
    public int FormatVersion { get; init; } = CurrentFormatVersion;

    /// <summary>The device: /dev/nbd<c>Index</c>.</summary>
    public required int Index { get; init; }

    /// <summary>What the device was connected with (NBD_ATTR_BACKEND_IDENTIFIER, /sys/block/nbdN/backend); RECONFIGURE must repeat it.</summary>
    public required string BackendIdentifier { get; init; }

    /// <summary>NBD URIs in order of preference. More than one only for read-only devices (failover).</summary>
    public required IReadOnlyList<string> Servers { get; init; }

    /// <summary>The export every server must serve under this name.</summary>
    public required string ExportName { get; init; }

    /// <summary>Export size in bytes at attach; a server with another size is refused.</summary>
    public required long Size { get; init; }

    /// <summary>
    /// Transmission flags the server advertised at attach, which the kernel now relies on: a replacement server must
    /// offer every command among them that the device can send (see <see cref="ServerAcceptance"/>).
    /// </summary>
    public required TransmissionFlags TransmissionFlags { get; init; }

    /// <summary>The device is read-only (by request or because the export is). Only read-only devices fail over.</summary>
    public required bool ReadOnly { get; init; }

    /// <summary>Sockets per device (one unless the export advertises multi-conn).</summary>
    public required int Connections { get; init; }

    /// <summary>
    /// NBD_ATTR_TIMEOUT: a request unanswered this long marks its socket dead and is requeued. It is also how long
    /// requests that were in flight when a server died wait before they are sent again on the new socket.
    /// </summary>
    public required int RequestTimeoutSeconds { get; init; }

    /// <summary>NBD_ATTR_DEAD_CONN_TIMEOUT: how long the kernel holds I/O while no connection is alive before failing it with EIO.</summary>
    public required int DeadConnectionTimeoutSeconds { get; init; }

    /// <summary><see cref="Supervision.ContentFingerprint"/> of the image at attach (read-only devices); null skips the content check.</summary>
    public string? ContentFingerprint { get; init; }

    /// <summary>TLS client settings by file path; null for plaintext unless the URIs are nbds://.</summary>
    public SupervisionTlsFiles? Tls { get; init; }

    [JsonIgnore]
    public IReadOnlyList<NbdUri> ServerUris => Servers.Select(NbdUri.Parse).ToArray();

    /// <summary>Throws <see cref="ArgumentException"/> naming the first field that cannot work.</summary>
    public void Validate()
    {
        if (FormatVersion != CurrentFormatVersion)
            throw new ArgumentException($"Supervision record format {FormatVersion} is not supported (this version reads {CurrentFormatVersion}).");
        if (Index < 0) throw new ArgumentException($"Index must be 0 or more (is {Index}).");
        if (string.IsNullOrEmpty(BackendIdentifier)) throw new ArgumentException("BackendIdentifier is empty; RECONFIGURE needs the identifier the device was connected with.");
        if (Servers is null || Servers.Count == 0) throw new ArgumentException("Servers is empty; give at least one NBD URI.");
        foreach (var text in Servers)
        {
            if (!NbdUri.TryParse(text, out var uri)) throw new ArgumentException($"Servers holds '{text}', which is not an NBD URI (nbd://host:port/export, nbd+unix:///export?socket=path, nbds://...).");
            if (uri.ExportName != ExportName)
                throw new ArgumentException($"Server '{text}' names export '{uri.ExportName}', but the device was attached to export '{ExportName}'; every server must serve the same export name.");
        }
        if (Servers.Count > 1 && !ReadOnly)
            throw new ArgumentException("Failover between servers is only for read-only devices: writes acknowledged by one server are not on another, so a writable device reconnects only to the server it was attached to.");
        if (Size <= 0) throw new ArgumentException($"Size must be positive (is {Size}).");
        if (Connections < 1) throw new ArgumentException($"Connections must be 1 or more (is {Connections}).");
        if (Connections > 1 && !TransmissionFlags.HasFlag(TransmissionFlags.CanMultiConn))
            throw new ArgumentException($"{Connections} connections need an export that advertises CAN_MULTI_CONN.");
        if (RequestTimeoutSeconds < 1)
            throw new ArgumentException("RequestTimeoutSeconds must be 1 or more: without a request timeout the kernel never requeues I/O that was in flight on a dead connection.");
        if (DeadConnectionTimeoutSeconds < 1)
            throw new ArgumentException("DeadConnectionTimeoutSeconds must be 1 or more: with 0 the kernel fails I/O at once instead of waiting for a reconnect.");
        Tls?.Validate();
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Parses and validates a record written by <see cref="ToJson"/>.</summary>
    public static SupervisionRecord FromJson(string json)
    {
        SupervisionRecord? record;
        try { record = JsonSerializer.Deserialize<SupervisionRecord>(json, Json); }
        catch (JsonException e) { throw new ArgumentException($"Not a supervision record: {e.Message}", e); }
        if (record is null) throw new ArgumentException("Not a supervision record: the JSON is null.");
        record.Validate();
        return record;
    }
}

/// <summary>TLS client settings as file paths, loaded again on every reconnect (so renewed certificates are picked up).</summary>
public sealed record SupervisionTlsFiles
{
    /// <summary>PEM bundle of authorities the server certificate must chain to; null trusts the system store.</summary>
    public string? CertificateAuthorityPath { get; init; }
    /// <summary>Client certificate (PEM or PKCS#12 without password) for servers that ask for one.</summary>
    public string? ClientCertificatePath { get; init; }
    /// <summary>PEM private key of the client certificate when it is in a separate file.</summary>
    public string? ClientKeyPath { get; init; }
    /// <summary>Name the server certificate must carry; null uses each URI's host.</summary>
    public string? TargetHost { get; init; }
    /// <summary>Accept any server certificate (encryption without authentication).</summary>
    public bool SkipCertificateCheck { get; init; }

    public void Validate()
    {
        if (ClientKeyPath is not null && ClientCertificatePath is null)
            throw new ArgumentException("Tls.ClientKeyPath is set without Tls.ClientCertificatePath.");
    }

    /// <summary>Reads the files now; throws FileNotFoundException or ArgumentException when they are missing or unreadable.</summary>
    public NbdClientTlsOptions Load() => new()
    {
        CertificateAuthorities = CertificateAuthorityPath is { } ca ? Security.CertificateFiles.LoadAuthorities(ca) : null,
        ClientCertificate = ClientCertificatePath is { } cert ? Security.CertificateFiles.LoadWithKey(cert, ClientKeyPath) : null,
        TargetHost = TargetHost,
        SkipCertificateCheck = SkipCertificateCheck,
    };
}
