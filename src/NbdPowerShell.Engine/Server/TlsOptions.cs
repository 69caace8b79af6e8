using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Server;

/// <summary>How a server treats TLS, after nbd-server and nbdkit.</summary>
public enum TlsMode
{
    /// <summary>No TLS: STARTTLS is refused with ERR_POLICY.</summary>
    None,
    /// <summary>Clients may upgrade with STARTTLS; exports marked TLS-only need it (SELECTIVETLS).</summary>
    Allow,
    /// <summary>Every option but STARTTLS and ABORT needs TLS first (FORCEDTLS).</summary>
    Require,
}

/// <summary>Server-side TLS settings. The private key stays inside the certificate object and is never logged.</summary>
public sealed class TlsOptions
{
    public TlsOptions(X509Certificate2 serverCertificate, TlsMode mode = TlsMode.Require)
    {
        ArgumentNullException.ThrowIfNull(serverCertificate);
        if (!serverCertificate.HasPrivateKey)
            throw new ArgumentException("The server certificate has no private key.", nameof(serverCertificate));
        if (mode == TlsMode.None)
            throw new ArgumentException("TlsOptions need a mode of Allow or Require.", nameof(mode));
        ServerCertificate = serverCertificate;
        Mode = mode;
    }

    public X509Certificate2 ServerCertificate { get; }

    public TlsMode Mode { get; }

    /// <summary>
    /// When set, clients must present a certificate that chains to one of these authorities
    /// (mutual TLS); the system trust store is not consulted.
    /// </summary>
    public X509Certificate2Collection? ClientCertificateAuthorities { get; init; }
}
