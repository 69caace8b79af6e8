using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Serialization;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Security;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// Client TLS for attaching a device: PEM files (what the service keeps in its configuration), or, for work done
/// in this process only, certificate objects.
/// </summary>
public sealed record ClientTlsSpec
{
    /// <summary>PEM bundle the server certificate must chain to; null uses the system store.</summary>
    public string? CertificateAuthorityPath { get; init; }
    /// <summary>PEM or PKCS#12 client certificate for mutual TLS (its key in the same file or <see cref="ClientKeyPath"/>).</summary>
    public string? ClientCertificatePath { get; init; }
    public string? ClientKeyPath { get; init; }
    /// <summary>Accept any server certificate: encryption without authentication.</summary>
    public bool SkipCertificateCheck { get; init; }

    /// <summary>A client certificate object (in-process only).</summary>
    [JsonIgnore]
    public X509Certificate2? ClientCertificate { get; init; }

    /// <summary>True when it holds objects that cannot be sent to the service or written to its configuration.</summary>
    [JsonIgnore]
    public bool HasObjects => ClientCertificate is not null;

    public void Validate()
    {
        foreach (var path in new[] { CertificateAuthorityPath, ClientCertificatePath, ClientKeyPath }.OfType<string>())
            if (!Path.IsPathFullyQualified(path))
                throw new ArgumentException($"The TLS file path '{path}' must be absolute.");
        if (ClientKeyPath is not null && ClientCertificatePath is null)
            throw new ArgumentException("A client key file needs a client certificate file.");
        if (ClientCertificate is not null && ClientCertificatePath is not null)
            throw new ArgumentException("Give either a client certificate object or a client certificate file, not both.");
    }

    public NbdClientTlsOptions Load() => new()
    {
        CertificateAuthorities = CertificateAuthorityPath is null ? null : CertificateFiles.LoadAuthorities(CertificateAuthorityPath),
        ClientCertificate = ClientCertificate ?? (ClientCertificatePath is null ? null : CertificateFiles.LoadWithKey(ClientCertificatePath, ClientKeyPath)),
        SkipCertificateCheck = SkipCertificateCheck,
    };
}
