using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>Our client over STARTTLS: against our server (modes, validation, mutual TLS) and against nbdkit.</summary>
public sealed class NbdClientTlsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-ctls-").FullName;
    private readonly TestCertificates _certs;

    public NbdClientTlsTests() => _certs = new TestCertificates(_dir);

    public void Dispose()
    {
        _certs.Dispose();
        Directory.Delete(_dir, true);
    }

    private TestServer Serve(TlsMode mode = TlsMode.Require, bool mutual = false, bool tlsOnlyExport = false)
    {
        var tls = new TlsOptions(_certs.Server, mode)
        {
            ClientCertificateAuthorities = mutual ? new X509Certificate2Collection(_certs.Authority) : null,
        };
        // The default handshake deadline (30 s): a shorter one can expire while a loaded machine runs the TLS handshake.
        var server = new TestServer(new NbdServerOptions { Tls = tls });
        server.Server.AddExport(new ExportDefinition("d", new MemoryBlockStore(4 << 20)) { TlsOnly = tlsOnlyExport });
        return server;
    }

    private NbdClientOptions Trusting(X509Certificate2? client = null, string? host = null) => new()
    {
        Timeout = TimeSpan.FromSeconds(30),
        Tls = new NbdClientTlsOptions
        {
            CertificateAuthorities = new X509Certificate2Collection(_certs.Authority),
            ClientCertificate = client,
            TargetHost = host,
        },
    };

    [Fact]
    public async Task Connects_over_tls_with_the_ca_and_reads_and_writes()
    {
        await using var server = Serve();
        await using var c = await NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), Trusting());
        Assert.True(c.IsTls);
        Assert.Equal("nbds", c.Uri.Scheme);
        Assert.Equal(4 << 20, c.Size);
        var data = RandomNumberGenerator.GetBytes(3 << 20);
        await c.WriteAsync(4096, data);
        await c.FlushAsync();
        await c.TrimAsync(0, 4096);
        var back = new byte[data.Length];
        await c.ReadAsync(4096, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task An_nbds_uri_implies_tls_and_lists_and_queries_exports()
    {
        await using var server = Serve();
        var uri = NbdUri.Parse($"nbds://localhost:{server.Port}/d");
        var list = await NbdClient.ListExportsAsync(uri, Trusting());
        Assert.Equal(4 << 20, Assert.Single(list).Size);
        var info = await NbdClient.GetExportInfoAsync(uri, Trusting());
        Assert.Equal("d", info.Name);
    }

    [Fact]
    public async Task A_plain_client_against_a_require_server_gets_tls_required()
    {
        await using var server = Serve();
        var uri = NbdUri.ForTcp("127.0.0.1", server.Port, "d");
        var e = await Assert.ThrowsAsync<NbdTlsRequiredException>(() => NbdClient.ConnectAsync(uri));
        Assert.Contains("TLS", e.Message);
        await Assert.ThrowsAsync<NbdTlsRequiredException>(() => NbdClient.ListExportsAsync(uri));
    }

    [Fact]
    public async Task The_system_store_does_not_trust_the_test_ca()
    {
        await using var server = Serve();
        var options = new NbdClientOptions { Tls = new NbdClientTlsOptions() };
        var e = await Assert.ThrowsAsync<NbdCertificateValidationException>(() => NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), options));
        Assert.Contains("does not chain to the system trust store", e.Message);
        Assert.Contains("-CertificateAuthority", e.Message);
        Assert.Contains("-SkipCertificateCheck", e.Message);
    }

    [Fact]
    public async Task A_wrong_ca_is_refused()
    {
        await using var server = Serve();
        var options = new NbdClientOptions { Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(_certs.OtherAuthority) } };
        var e = await Assert.ThrowsAsync<NbdCertificateValidationException>(() => NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), options));
        Assert.Contains("given certificate authorities", e.Reason);
    }

    [Fact]
    public async Task A_name_mismatch_is_refused()
    {
        await using var server = Serve();
        var e = await Assert.ThrowsAsync<NbdCertificateValidationException>(() =>
            NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), Trusting(host: "nbd.example.org")));
        Assert.Contains("does not match 'nbd.example.org'", e.Reason);
        Assert.Contains("localhost", e.Reason);
    }

    [Fact]
    public async Task Skipping_the_certificate_check_accepts_any_certificate()
    {
        await using var server = Serve();
        var options = new NbdClientOptions { Tls = new NbdClientTlsOptions { SkipCertificateCheck = true, TargetHost = "wrong.example" } };
        await using var c = await NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), options);
        Assert.True(c.IsTls);
    }

    [Fact]
    public async Task Mutual_tls_needs_the_client_certificate()
    {
        await using var server = Serve(mutual: true);
        var uri = NbdUri.ForTcp("127.0.0.1", server.Port, "d");
        await using (var c = await NbdClient.ConnectAsync(uri, Trusting(client: _certs.Client)))
            Assert.True(c.IsTls);
        var e = await Assert.ThrowsAsync<NbdTlsHandshakeException>(() => NbdClient.ConnectAsync(uri, Trusting()));
        Assert.IsNotType<NbdCertificateValidationException>(e);
        Assert.Contains("-ClientCertificate", e.Message);
    }

    [Fact]
    public async Task Tls_against_a_server_without_tls_says_the_server_does_not_offer_it()
    {
        await using var server = new TestServer();
        server.Add("d", new MemoryBlockStore(1 << 20));
        var e = await Assert.ThrowsAsync<NbdTlsNotSupportedException>(() => NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", server.Port, "d"), Trusting()));
        Assert.Contains("does not offer TLS", e.Message);
    }

    [Fact]
    public async Task Selective_tls_export_is_reachable_over_tls_only()
    {
        await using var server = Serve(TlsMode.Allow, tlsOnlyExport: true);
        var uri = NbdUri.ForTcp("127.0.0.1", server.Port, "d");
        await Assert.ThrowsAsync<NbdTlsRequiredException>(() => NbdClient.ConnectAsync(uri));
        await using var c = await NbdClient.ConnectAsync(uri, Trusting());
        Assert.True(c.IsTls);
    }

    [Fact]
    public async Task Pem_files_load_for_server_and_client_certificates()
    {
        string cert = Path.Combine(_dir, "server-cert.pem"), key = Path.Combine(_dir, "server-key.pem");
        using var loaded = Security.CertificateFiles.LoadWithKey(cert, key);
        Assert.True(loaded.HasPrivateKey);
        Assert.Equal(_certs.Server.Thumbprint, loaded.Thumbprint);
        var authorities = Security.CertificateFiles.LoadAuthorities(Path.Combine(_dir, "ca-cert.pem"));
        Assert.Equal(_certs.Authority.Thumbprint, Assert.Single(authorities).Thumbprint);

        var server = new TestServer(new NbdServerOptions { Tls = new TlsOptions(loaded) });
        await using (server)
        {
            server.Add("d", new MemoryBlockStore(1 << 20));
            using var client = Security.CertificateFiles.LoadWithKey(Path.Combine(_certs.ClientDirectory, "client-cert.pem"), Path.Combine(_certs.ClientDirectory, "client-key.pem"));
            var options = new NbdClientOptions { Tls = new NbdClientTlsOptions { CertificateAuthorities = authorities, ClientCertificate = client } };
            await using var c = await NbdClient.ConnectAsync(NbdUri.ForTcp("localhost", server.Port, "d"), options);
            Assert.Equal(1 << 20, c.Size);
        }
    }

    [Fact]
    public async Task Nbdkit_with_tls_require_is_reachable_and_refuses_plain_clients()
    {
        using var nbdkit = PeerServer.Nbdkit("--tls=require", $"--tls-certificates={_dir}", "memory", "1M");
        var uri = nbdkit.Uri;
        await using (var c = await NbdClient.ConnectAsync(uri, Trusting()))
        {
            Assert.True(c.IsTls);
            Assert.Equal(1 << 20, c.Size);
            var data = RandomNumberGenerator.GetBytes(256 << 10);
            await c.WriteAsync(65536, data);
            var back = new byte[data.Length];
            await c.ReadAsync(65536, back);
            Assert.Equal(data, back);
        }
        Assert.Single(await NbdClient.ListExportsAsync(uri, Trusting()));
        await Assert.ThrowsAsync<NbdTlsRequiredException>(() => NbdClient.ConnectAsync(uri));
    }
}
