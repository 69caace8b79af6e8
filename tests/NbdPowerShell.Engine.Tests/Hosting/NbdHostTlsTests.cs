using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Hosting;

/// <summary>TLS exports in the host: URIs, listener sharing, TLS from files or objects, local connections without TLS.</summary>
public sealed class NbdHostTlsTests : IDisposable
{
    private readonly NbdHost _host = new(HostScope.Process, NullLoggerFactory.Instance);
    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-hosttls-").FullName;
    private readonly TestCertificates _certs;

    public NbdHostTlsTests() => _certs = new TestCertificates(_dir);

    public void Dispose()
    {
        _host.Shutdown();
        _certs.Dispose();
        Directory.Delete(_dir, true);
    }

    private ServerTlsSpec Files(TlsMode mode = TlsMode.Require) => new()
    {
        Mode = mode,
        CertificatePath = Path.Combine(_dir, "server-cert.pem"),
        KeyPath = Path.Combine(_dir, "server-key.pem"),
    };

    private ExportSpec Secure(string name, int port = 0, TlsMode mode = TlsMode.Require, bool tlsOnly = false) => new()
    {
        Name = name, MemorySize = 1 << 20, Listeners = [ListenerSpec.Tcp("127.0.0.1", port)], Tls = Files(mode), TlsOnly = tlsOnly,
    };

    private ExportInfo Start(ExportSpec spec) => _host.StartExportAsync(spec).GetAwaiter().GetResult().Value;

    private NbdClientOptions Trusting => new() { Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(_certs.Authority) } };

    [Fact]
    public void Required_TLS_exports_have_nbds_uris_and_refuse_plain_clients()
    {
        var e = Start(Secure("s"));
        Assert.Equal($"nbds://127.0.0.1:{e.Port}/s", e.Uri);
        Assert.Equal("Require", e.TlsMode);
        Assert.Equal(_certs.Server.Thumbprint, e.CertificateThumbprint);
        Assert.Throws<NbdTlsRequiredException>(() => NbdClient.ListExportsAsync(NbdUri.ForTcp("127.0.0.1", e.Port)).GetAwaiter().GetResult());
        Assert.Equal("s", Assert.Single(NbdClient.ListExportsAsync(NbdUri.Parse(e.Uri), Trusting).GetAwaiter().GetResult()).Name);
    }

    [Fact]
    public void Certificate_objects_work_in_process_but_not_for_persistence()
    {
        var objects = new ServerTlsSpec { Certificate = _certs.Server };
        var spec = Secure("o") with { Tls = objects };
        var e = Start(spec);
        Assert.Equal(_certs.Server.Thumbprint, e.CertificateThumbprint);
        var error = Assert.Throws<ArgumentException>(() => spec.Validate(persistent: true));
        Assert.Contains("-CertificatePath", error.Message);
    }

    [Fact]
    public void Exports_on_one_listener_must_agree_on_TLS()
    {
        var a = Start(Secure("a"));
        var e = Assert.Throws<ArgumentException>(() => Start(new ExportSpec { Name = "b", MemorySize = 1 << 20, Listeners = [ListenerSpec.Tcp("127.0.0.1", a.Port)] }));
        Assert.Contains("must agree on TLS", e.Message);
        Assert.Equal("Require", Start(Secure("c", a.Port)).TlsMode);
    }

    [Fact]
    public void TLS_only_exports_under_Allow_are_nbds_and_others_stay_plain()
    {
        var open = Start(Secure("open", mode: TlsMode.Allow));
        var secret = Start(Secure("secret", open.Port, TlsMode.Allow, tlsOnly: true));
        Assert.StartsWith("nbd://", open.Uri);
        Assert.StartsWith("nbds://", secret.Uri);
        Assert.True(secret.IsTlsOnly);
        Assert.Equal(["open"], NbdClient.ListExportsAsync(NbdUri.ForTcp("127.0.0.1", open.Port)).GetAwaiter().GetResult().Select(x => x.Name));
    }

    [Fact]
    public void A_local_connection_reaches_a_TLS_only_export_without_TLS()
    {
        Start(Secure("open", mode: TlsMode.Allow));
        Start(Secure("secret", _host.GetExport("open")!.Port, TlsMode.Allow, tlsOnly: true));
        var (socket, uri) = _host.OpenLocalConnectionAsync("secret").GetAwaiter().GetResult();
        Assert.True(uri.Tls);
        using var c = NbdClient.NegotiateAsync(socket, uri.WithTls(false)).GetAwaiter().GetResult();
        Assert.False(c.IsTls);
        Assert.Equal(1 << 20, c.Size);
    }

    [Fact]
    public void A_TCP_and_a_Unix_listener_of_one_export_both_speak_TLS()
    {
        string socket = Path.Combine(_dir, "tls.sock");
        var e = Start(Secure("both") with { Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Unix(socket)] });
        using var tcp = NbdClient.ConnectAsync(NbdUri.Parse(e.Uri), Trusting).GetAwaiter().GetResult();
        using var unix = NbdClient.ConnectAsync(NbdUri.ForUnix(socket, "both", tls: true), Trusting).GetAwaiter().GetResult();
        Assert.True(tcp.IsTls && unix.IsTls);
    }
}
