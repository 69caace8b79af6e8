using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// Kernel devices owned by the service: persistent ones are supervised (recorded, taken back after a service restart
/// by index and backend identifier, or attached again when gone; a TLS relay that ended with the previous process is
/// replaced by reconnecting), devices of the service's own exports use the plain kernel kind.
/// </summary>
[Trait("Category", "Kernel")]
[Collection("Kernel")]
public sealed class ServiceDeviceTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly NbdHost _server = new(HostScope.Process, NullLoggerFactory.Instance);
    private readonly TestService _service = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var d in NbdDeviceDiscovery.System().GetDevices().Where(d => d.IsConnected && d.BackendIdentifier?.Contains("/svc-") == true))
            await new KernelAttacher().DisconnectAsync(d.Index, force: true);
        await _service.DisposeAsync();
        _server.Shutdown();
    }

    private async Task<ExportInfo> ServeAsync(string name, ServerTlsSpec? tls = null) =>
        (await _server.StartExportAsync(new ExportSpec { Name = name, MemorySize = Size, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)], Tls = tls })).Value;

    private static DeviceRequest Persistent(ExportInfo export, ClientTlsSpec? tls = null) => new()
    {
        Uris = [export.Uri], Persistent = true, Tls = tls, TimeoutSeconds = 120,
    };

    [KernelFact]
    public async Task A_plain_persistent_device_is_taken_back_after_a_restart_and_attached_again_once_gone()
    {
        var export = await ServeAsync("svc-plain");
        await _service.StartInProcessAsync();
        var attached = await _service.Client.AttachDeviceAsync(Persistent(export), CancellationToken.None);
        Assert.True(attached.Changed);
        var device = attached.Value;
        Assert.Equal(("Connected", "Plain", true, "supervised"), (device.State, device.Transport, device.IsPersistent, device.Kind));
        Assert.Equal(0, device.Counters["Reconnects"]);
        var written = WriteRandom(device.Device!, 1 << 20);
        Assert.False((await _service.Client.AttachDeviceAsync(Persistent(export), CancellationToken.None)).Changed);

        // A restart: the kernel kept the device; the service recognises it by index and backend identifier.
        await _service.StopInProcessAsync();
        Assert.True(Device(device.Index!.Value).IsConnected);
        await _service.StartInProcessAsync();
        var adopted = Assert.Single(await _service.Client.GetDevicesAsync(CancellationToken.None));
        Assert.Equal((device.Id, device.Device, "Connected"), (adopted.Id, adopted.Device, adopted.State));
        Assert.Contains(adopted.History, h => h.Event == "Adopted");
        Assert.Equal(written, HashDevice(device.Device!, 1 << 20));

        // Gone while the service was down (a reboot, or someone disconnected it): attached again at the next start.
        await _service.StopInProcessAsync();
        await DisconnectAndVerifyFreeAsync(device.Index.Value);
        await _service.StartInProcessAsync();
        var again = Assert.Single(await _service.Client.GetDevicesAsync(CancellationToken.None));
        Assert.Equal(("Connected", device.Id), (again.State, again.Id));
        Assert.Contains(again.History, h => h.Event == "Reattached");
        Assert.Equal(written, HashDevice(again.Device!, 1 << 20));

        var detached = await _service.Client.DetachDeviceAsync(again.Device!, force: false, TimeSpan.FromSeconds(60), CancellationToken.None);
        Assert.Equal("Disconnected", detached.State);
        Assert.Empty(await _service.Client.GetDevicesAsync(CancellationToken.None));
        Assert.False(Device(again.Index!.Value).IsConnected);
    }

    [KernelFact]
    public async Task A_TLS_device_lives_with_the_relay_in_the_service_and_reconnects_through_a_new_relay_after_a_restart()
    {
        string dir = Directory.CreateTempSubdirectory("nbdps-svctls-").FullName;
        using var certificates = new TestCertificates(dir);
        try
        {
            var export = await ServeAsync("svc-tls", new ServerTlsSpec { CertificatePath = Path.Combine(dir, "server-cert.pem"), KeyPath = Path.Combine(dir, "server-key.pem") });
            Assert.StartsWith("nbds://", export.Uri);
            await _service.StartInProcessAsync();
            var device = (await _service.Client.AttachDeviceAsync(Persistent(export, new ClientTlsSpec { CertificateAuthorityPath = Path.Combine(dir, "ca-cert.pem") }), CancellationToken.None)).Value;
            Assert.Equal(("Connected", "TLS relay"), (device.State, device.Transport));
            var written = WriteRandom(device.Device!, 1 << 20);
            Assert.Equal(written, HashDevice(device.Device!, 1 << 20));

            // The relay ends with the service process; the next service adopts the device, finds its dead socket and
            // gives the kernel a new TLS connection through a new relay.
            await _service.StopInProcessAsync();
            await _service.StartInProcessAsync();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            DeviceStatus adopted;
            while ((adopted = Assert.Single(await _service.Client.GetDevicesAsync(CancellationToken.None))) is not { State: "Connected" } || adopted.Counters["Reconnects"] < 1)
            {
                Assert.True(clock.Elapsed < TimeSpan.FromMinutes(10), $"the adopted TLS device did not reconnect: {adopted.State} {adopted.Message}");
                await Task.Delay(200);
            }
            Assert.Contains(adopted.History, h => h.Event == "Adopted");
            Assert.Equal("TLS relay", adopted.Transport);
            Assert.Equal(written, HashDevice(device.Device!, 1 << 20));
            await _service.Client.DetachDeviceAsync(adopted.Device!, force: true, TimeSpan.FromSeconds(60), CancellationToken.None);
            Assert.Empty(await _service.Client.GetDevicesAsync(CancellationToken.None));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [KernelFact]
    public async Task An_export_of_the_service_is_attached_by_the_service_over_a_socket_pair()
    {
        await _service.StartInProcessAsync();
        var export = (await _service.Client.StartExportAsync(
            new ExportSpec { Name = "svc-own", MemorySize = Size, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }, replace: false, persistent: true, CancellationToken.None)).Value;
        var device = (await _service.Client.AttachDeviceAsync(new DeviceRequest { Uris = [export.Uri], LocalExport = "svc-own", TimeoutSeconds = 120 }, CancellationToken.None)).Value;
        Assert.Equal(("Local socket pair", false), (device.Transport, device.IsPersistent));
        Assert.Equal(export.Uri, Device(device.Index!.Value).BackendIdentifier);
        var written = WriteRandom(device.Device!, 1 << 20);
        Assert.Equal(written, HashDevice(device.Device!, 1 << 20));
        await _service.Client.DetachDeviceAsync(device.Device!, force: false, TimeSpan.FromSeconds(60), CancellationToken.None);
    }
}
