using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// Client-side TLS settings. Setting <see cref="NbdClientOptions.Tls"/> (or using an nbds:// URI) makes TLS
/// mandatory: the client sends STARTTLS first and never falls back to plaintext.
/// </summary>
public sealed record NbdClientTlsOptions
{
    public static NbdClientTlsOptions Default { get; } = new();

    /// <summary>Authorities the server certificate must chain to; null trusts the system store.</summary>
    public X509Certificate2Collection? CertificateAuthorities { get; init; }

    /// <summary>The name the server certificate must carry; null uses the URI host ("localhost" for Unix sockets).</summary>
    public string? TargetHost { get; init; }

    /// <summary>Presented when the server asks for one (mutual TLS); must hold its private key.</summary>
    public X509Certificate2? ClientCertificate { get; init; }

    /// <summary>Accept any server certificate (encryption without authentication). An explicit opt-out.</summary>
    public bool SkipCertificateCheck { get; init; }

    /// <summary>The name checked against the server certificate for <paramref name="uri"/>.</summary>
    public string TargetHostFor(NbdUri uri) => TargetHost ?? (uri.IsUnix ? "localhost" : uri.Host);
}
