using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Server;
using Xunit;

namespace NbdPowerShell.Module.Tests;

/// <summary>TLS exports in the export host: URIs, output objects, listener sharing, error ids.</summary>
public sealed class TlsExportHostTests : IDisposable
{
    private readonly ExportHost _host = new(new EngineLog());
    private readonly X509Certificate2 _certificate = SelfSigned();

    public void Dispose()
    {
        _host.Shutdown();
        _certificate.Dispose();
    }

    private static X509Certificate2 SelfSigned()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
    }

    private ExportRequest Secure(string name, int port = 0, TlsMode mode = TlsMode.Require, bool tlsOnly = false) =>
        new() { Name = name, MemorySize = 1 << 20, Port = port, Tls = new TlsOptions(_certificate, mode), TlsOnly = tlsOnly };

    [Fact]
    public void RequiredTlsExportsHaveNbdsUrisAndShowNoKeys()
    {
        var e = _host.Start(Secure("s"));
        Assert.Equal($"nbds://127.0.0.1:{e.Port}/s", e.Uri);
        Assert.Equal("Require", e.TlsMode);
        Assert.Equal(_certificate.Thumbprint, e.CertificateThumbprint);
        Assert.DoesNotContain(typeof(NbdExport).GetProperties(), p => p.PropertyType == typeof(X509Certificate2) || p.Name.Contains("Key", StringComparison.Ordinal));

        var plain = Assert.ThrowsAny<Exception>(() => NbdClient.ListExportsAsync(NbdUri.ForTcp("127.0.0.1", e.Port)).GetAwaiter().GetResult());
        Assert.Equal(ErrorIds.TlsRequired, ErrorIds.Classify(plain));
        var tls = new NbdClientOptions { Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(_certificate) } };
        Assert.Equal("s", Assert.Single(NbdClient.ListExportsAsync(NbdUri.Parse(e.Uri), tls).GetAwaiter().GetResult()).Name);
    }

    [Fact]
    public void ExportsOnOneListenerMustAgreeOnTls()
    {
        var a = _host.Start(Secure("a"));
        var e = Assert.Throws<ArgumentException>(() => _host.Start(new ExportRequest { Name = "b", MemorySize = 1 << 20, Port = a.Port }));
        Assert.Contains("must agree on TLS", e.Message);
        Assert.Equal(ErrorIds.InvalidArgument, ErrorIds.Classify(e));
        Assert.Equal("Require", _host.Start(Secure("c", a.Port)).TlsMode);
    }

    [Fact]
    public void TlsOnlyExportsUnderAllowAreNbdsAndOthersStayPlain()
    {
        var open = _host.Start(Secure("open", mode: TlsMode.Allow));
        var secret = _host.Start(Secure("secret", open.Port, TlsMode.Allow, tlsOnly: true));
        Assert.StartsWith("nbd://", open.Uri);
        Assert.StartsWith("nbds://", secret.Uri);
        Assert.True(secret.IsTlsOnly);
        Assert.Equal((true, false), _host.LocalTlsOf("secret"));
        Assert.Equal((false, false), _host.LocalTlsOf("open"));
    }

    [Fact]
    public void TlsFailuresHaveTheirOwnIds()
    {
        Assert.Equal(ErrorIds.TlsNotSupported, ErrorIds.Classify(new NbdTlsNotSupportedException("m")));
        Assert.Equal(ErrorIds.TlsHandshakeFailed, ErrorIds.Classify(new NbdTlsHandshakeException("m")));
        Assert.Equal(ErrorIds.CertificateInvalid, ErrorIds.Classify(new NbdCertificateValidationException("r", "m")));
    }
}
