using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// The client side of STARTTLS: sent before any other option (downgrade defence), then a TLS 1.2+ handshake
/// that checks the server certificate against the given authorities (or the system store) and its name.
/// Failures say what failed and how to fix it.
/// </summary>
internal static class ClientTlsHandshake
{
    public static async Task<SslStream> UpgradeAsync(NbdNegotiator negotiator, Stream inner, NbdUri uri, NbdClientTlsOptions options, CancellationToken ct)
    {
        string peer = NbdClient.Describe(uri);
        await negotiator.StartTlsAsync(ct).ConfigureAwait(false);
        string host = options.TargetHostFor(uri);
        string? failure = null;
        var ssl = new SslStream(inner, leaveInnerStreamOpen: false);
        var auth = new SslClientAuthenticationOptions
        {
            TargetHost = host,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificates = options.ClientCertificate is { } mine ? new X509CertificateCollection { mine } : null,
            RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
            {
                failure = Validate(certificate, errors, host, options);
                return failure is null;
            },
        };
        try
        {
            await ssl.AuthenticateAsClientAsync(auth, ct).ConfigureAwait(false);
            negotiator.UseStream(ssl);
            return ssl;
        }
        catch (Exception e) when (e is AuthenticationException or IOException)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            if (failure is not null)
                throw new NbdCertificateValidationException(failure,
                    $"The TLS certificate of {peer} was refused: {failure}. Trust its authority with -CertificateAuthority <ca.pem> " +
                    "(CertificateAuthorities), or opt out of the check with -SkipCertificateCheck (encryption without authentication).", e);
            string hint = options.ClientCertificate is null
                ? " If the server requires client certificates (mutual TLS), give one with -ClientCertificate."
                : " Check that the server trusts the authority of the client certificate.";
            throw new NbdTlsHandshakeException($"The TLS handshake with {peer} failed: {e.GetBaseException().Message}.{hint}", e);
        }
        catch
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Null when the certificate is acceptable; otherwise what is wrong with it.</summary>
    internal static string? Validate(X509Certificate? certificate, SslPolicyErrors errors, string host, NbdClientTlsOptions options)
    {
        if (options.SkipCertificateCheck) return null;
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
            return "the server sent no certificate";
        using var leaf = new X509Certificate2(certificate);
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
            return $"its name does not match '{host}' (the certificate is for {Names(leaf)}); connect by a name the certificate carries";
        using var chain = new X509Chain();
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        if (options.CertificateAuthorities is { } authorities)
        {
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        }
        if (chain.Build(leaf)) return null;
        string status = string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct());
        string anchors = options.CertificateAuthorities is null ? "the system trust store" : "the given certificate authorities";
        return $"'{leaf.Subject}' (issued by '{leaf.Issuer}') does not chain to {anchors}{(status.Length > 0 ? $" ({status})" : "")}";
    }

    private static string Names(X509Certificate2 certificate)
    {
        var names = new List<string>();
        foreach (var ext in certificate.Extensions)
        {
            if (ext is X509SubjectAlternativeNameExtension san)
            {
                names.AddRange(san.EnumerateDnsNames());
                names.AddRange(san.EnumerateIPAddresses().Select(a => a.ToString()));
            }
        }
        return names.Count > 0 ? string.Join(", ", names) : $"'{certificate.Subject}'";
    }
}
