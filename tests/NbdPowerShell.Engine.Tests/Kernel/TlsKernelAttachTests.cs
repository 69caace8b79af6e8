using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>Attaching TLS exports: the kernel gets one end of a socketpair, a relay in this process speaks TLS to the server.</summary>
[Trait("Category", "Kernel")]
[Collection("Kernel")]
public sealed class TlsKernelAttachTests : IDisposable
{
    private const long Size = 16L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-ktls-").FullName;
    private readonly TestCertificates _certs;

    public TlsKernelAttachTests() => _certs = new TestCertificates(_dir);

    public void Dispose()
    {
        _certs.Dispose();
        Directory.Delete(_dir, true);
    }

    private NbdClientOptions TlsOptions => Options with
    {
        Tls = new NbdClientTlsOptions { CertificateAuthorities = new X509Certificate2Collection(_certs.Authority) },
    };

    private async Task<AttachResult> AttachTlsAsync(NbdUri uri, AttachOptions options, int connections)
    {
        var list = new List<NbdNegotiatedConnection>();
        for (int i = 0; i < connections; i++) list.Add(await NbdClient.ConnectAsync(uri, TlsOptions));
        Assert.All(list, c => Assert.True(c.IsTls));
        return await new KernelAttacher().AttachAsync(list, options);
    }

    [KernelFact]
    public async Task Tls_export_attaches_through_the_relay_round_trips_16MiB_and_disconnect_stops_the_relay()
    {
        using var nbdkit = PeerServer.Nbdkit("--tls=require", $"--tls-certificates={_dir}", "memory", "16M");
        var r = await AttachTlsAsync(nbdkit.Uri, new AttachOptions { Mode = AttachMode.Netlink }, connections: 1);
        var relays = r.Relays;
        try
        {
            Assert.True(r.IsTlsRelayed);
            Assert.True(relays[0].IsRunning);
            Assert.Single(relays);
            var d = Device(r.Index);
            Assert.True(d.IsConnected);
            Assert.Equal(Size, d.Size);
            Assert.StartsWith("nbds://", d.BackendIdentifier);
            Assert.True(d.Uri!.Tls);

            var written = WriteRandom(r.Device, Size);
            Assert.Equal(written, HashDevice(r.Device, Size));
            Assert.True(relays[0].BytesToServer > Size && relays[0].BytesToKernel > Size);
        }
        finally
        {
            await DisconnectAndVerifyFreeAsync(r.Index);
            // The kernel closed its ends: the relays forward NBD_CMD_DISC, end TLS and stop by themselves.
            await Task.WhenAll(relays.Select(x => x.StopAsync(TimeSpan.FromSeconds(30))));
        }
        Assert.All(relays, x => Assert.False(x.IsRunning));
        Assert.True(relays[0].Completion.IsCompleted);
    }

    [KernelFact]
    public async Task Multi_connection_tls_has_one_relay_per_connection()
    {
        using var nbdkit = PeerServer.Nbdkit("--tls=require", $"--tls-certificates={_dir}", "memory", "16M");
        var r = await AttachTlsAsync(nbdkit.Uri, new AttachOptions { Mode = AttachMode.Netlink }, connections: 2);
        try
        {
            Assert.Equal(2, r.Connections);
            Assert.Equal(2, r.Relays.Count);
            var written = WriteRandom(r.Device, 4L << 20);
            Assert.Equal(written, HashDevice(r.Device, 4L << 20));
        }
        finally
        {
            await DisconnectAndVerifyFreeAsync(r.Index);
            await Task.WhenAll(r.Relays.Select(x => x.StopAsync(TimeSpan.FromSeconds(30))));
        }
        Assert.All(r.Relays, x => Assert.False(x.IsRunning));
    }

    [KernelFact]
    public async Task A_dying_server_ends_the_relay()
    {
        var nbdkit = PeerServer.Nbdkit("--tls=require", $"--tls-certificates={_dir}", "memory", "16M");
        AttachResult r;
        try { r = await AttachTlsAsync(nbdkit.Uri, new AttachOptions { Mode = AttachMode.Netlink, Timeout = TimeSpan.FromSeconds(5), DeadConnectionTimeout = TimeSpan.Zero }, connections: 1); }
        catch { nbdkit.Dispose(); throw; }
        var relays = r.Relays;
        try
        {
            nbdkit.Dispose();
            await relays[0].Completion.WaitAsync(TimeSpan.FromSeconds(60));
            Assert.False(relays[0].IsRunning);
        }
        finally { await DisconnectAndVerifyFreeAsync(r.Index, force: true); }
    }
}
