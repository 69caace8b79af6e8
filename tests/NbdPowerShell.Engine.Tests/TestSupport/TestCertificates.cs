using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// A throw-away CA with a server certificate (for 127.0.0.1, ::1 and localhost) and a client
/// certificate, generated per test run and written as PEM files under the names gnutls clients
/// (libnbd, qemu) look for: ca-cert.pem, client-cert.pem, client-key.pem.
/// </summary>
internal sealed class TestCertificates : IDisposable
{
    public TestCertificates(string directory)
    {
        Directory = directory;
        using var caKey = RSA.Create(2048);
        var caRequest = new CertificateRequest("CN=NbdPowerShell Test CA", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        var now = DateTimeOffset.UtcNow.AddMinutes(-5);
        Authority = caRequest.CreateSelfSigned(now, now.AddDays(1));

        Server = Issue("CN=localhost", serverAuth: true, now);
        Client = Issue("CN=nbd-test-client", serverAuth: false, now);
        OtherAuthority = CreateUnrelatedAuthority(now);

        File.WriteAllText(Path.Combine(directory, "ca-cert.pem"), Authority.ExportCertificatePem());
        File.WriteAllText(Path.Combine(directory, "server-cert.pem"), Server.ExportCertificatePem());
        File.WriteAllText(Path.Combine(directory, "server-key.pem"), Server.GetRSAPrivateKey()!.ExportPkcs8PrivateKeyPem());
        ClientDirectory = System.IO.Directory.CreateDirectory(Path.Combine(directory, "client")).FullName;
        File.WriteAllText(Path.Combine(ClientDirectory, "ca-cert.pem"), Authority.ExportCertificatePem());
        File.WriteAllText(Path.Combine(ClientDirectory, "client-cert.pem"), Client.ExportCertificatePem());
        File.WriteAllText(Path.Combine(ClientDirectory, "client-key.pem"), Client.GetRSAPrivateKey()!.ExportPkcs8PrivateKeyPem());
    }

    /// <summary>Holds ca-cert.pem (and the server's PEM pair) — what a client without its own certificate needs.</summary>
    public string Directory { get; }

    /// <summary>Holds ca-cert.pem plus client-cert.pem/client-key.pem for mutual TLS.</summary>
    public string ClientDirectory { get; }

    public X509Certificate2 Authority { get; }
    public X509Certificate2 Server { get; }
    public X509Certificate2 Client { get; }
    public X509Certificate2 OtherAuthority { get; }

    private X509Certificate2 Issue(string subject, bool serverAuth, DateTimeOffset now)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection
        {
            new Oid(serverAuth ? "1.3.6.1.5.5.7.3.1" : "1.3.6.1.5.5.7.3.2"),
        }, false));
        if (serverAuth)
        {
            var san = new SubjectAlternativeNameBuilder();
            san.AddDnsName("localhost");
            san.AddIpAddress(IPAddress.Loopback);
            san.AddIpAddress(IPAddress.IPv6Loopback);
            request.CertificateExtensions.Add(san.Build());
        }
        var serial = RandomNumberGenerator.GetBytes(12);
        using var cert = request.Create(Authority, now, now.AddDays(1), serial);
        return cert.CopyWithPrivateKey(key);
    }

    private static X509Certificate2 CreateUnrelatedAuthority(DateTimeOffset now)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=Unrelated CA", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        return request.CreateSelfSigned(now, now.AddDays(1));
    }

    public void Dispose()
    {
        Authority.Dispose();
        Server.Dispose();
        Client.Dispose();
        OtherAuthority.Dispose();
    }
}
