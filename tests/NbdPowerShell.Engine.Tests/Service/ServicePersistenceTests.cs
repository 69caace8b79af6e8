using System.Text.Json;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Service;

/// <summary>
/// What the service keeps: persistent exports come back after a restart with the same port and data and stay gone
/// once stopped; device records of any kind are written, taken back through their kind, and kept when that fails.
/// </summary>
public sealed class ServicePersistenceTests : IAsyncLifetime
{
    private readonly TestService _service = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _service.DisposeAsync();

    private ExportSpec FileExport(string name, string path) =>
        new() { Name = name, Path = path, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0), ListenerSpec.Unix(Path.Combine(_service.Directory, name + ".sock"))] };

    [Fact]
    public async Task A_persistent_export_comes_back_after_a_restart_and_stays_gone_once_stopped()
    {
        string image = Path.Combine(_service.Directory, "disk.img");
        File.WriteAllBytes(image, new byte[4 << 20]);
        await _service.StartInProcessAsync();
        var started = await _service.Client.StartExportAsync(FileExport("disk", image), replace: false, persistent: true, CancellationToken.None);
        Assert.True(started.Changed);
        Assert.True(started.Value.IsPersistent);
        Assert.Equal(HostScope.Service, started.Value.Scope);
        using (var c = await NbdClient.ConnectAsync(NbdUri.Parse(started.Value.Uri)))
        {
            await c.WriteAsync(4096, new byte[] { 0xAB, 0xCD });
            await c.FlushAsync();
        }
        var again = await _service.Client.StartExportAsync(FileExport("disk", image), replace: false, persistent: true, CancellationToken.None);
        Assert.False(again.Changed);
        var different = await Assert.ThrowsAsync<NbdHostException>(() =>
            _service.Client.StartExportAsync(FileExport("disk", image) with { ReadOnly = true }, replace: false, persistent: true, CancellationToken.None));
        Assert.Equal(ErrorIds.ExportAlreadyExists, different.ErrorId);

        await _service.StopInProcessAsync();
        await _service.StartInProcessAsync();
        var back = Assert.Single(await _service.Client.GetExportsAsync(CancellationToken.None));
        Assert.Equal(("disk", "Running", started.Value.Port), (back.Name, back.State, back.Port));
        using (var c = await NbdClient.ConnectAsync(NbdUri.ForUnix(Path.Combine(_service.Directory, "disk.sock"), "disk")))
        {
            var data = new byte[2];
            await c.ReadAsync(4096, data);
            Assert.Equal(new byte[] { 0xAB, 0xCD }, data);
        }
        // The same command after the restart is still "nothing changed".
        Assert.False((await _service.Client.StartExportAsync(FileExport("disk", image), replace: false, persistent: true, CancellationToken.None)).Changed);

        // The client above has gone; the server notices it closed within moments.
        for (int i = 0; i < 200 && (await _service.Client.GetExportsAsync(CancellationToken.None))[0].ClientCount > 0; i++)
            await Task.Delay(50);
        var stopped = await _service.Client.StopExportAsync("disk", force: false, CancellationToken.None);
        Assert.Equal("Stopped", stopped.State);
        await _service.StopInProcessAsync();
        await _service.StartInProcessAsync();
        Assert.Empty(await _service.Client.GetExportsAsync(CancellationToken.None));
    }

    [Fact]
    public async Task An_export_that_cannot_start_is_reported_kept_and_starts_with_the_same_command_later()
    {
        string image = Path.Combine(_service.Directory, "late.img");
        File.WriteAllBytes(image, new byte[1 << 20]);
        await _service.StartInProcessAsync();
        await _service.Client.StartExportAsync(FileExport("late", image), replace: false, persistent: true, CancellationToken.None);
        await _service.StopInProcessAsync();
        File.Move(image, image + ".away");
        await _service.StartInProcessAsync();
        var failed = Assert.Single(await _service.Client.GetExportsAsync(CancellationToken.None));
        Assert.Equal("Failed", failed.State);
        Assert.Contains("late.img", failed.StatusMessage);
        Assert.Contains((await _service.Client.GetStatusAsync(CancellationToken.None)).Problems, p => p.Contains("'late' could not start"));
        File.Move(image + ".away", image);
        var now = await _service.Client.StartExportAsync(FileExport("late", image), replace: false, persistent: true, CancellationToken.None);
        Assert.True(now.Changed);
        Assert.Equal("Running", now.Value.State);
    }

    [Fact]
    public async Task The_service_only_takes_persistent_exports_and_refuses_new_work_while_stopping()
    {
        await _service.StartInProcessAsync();
        var e = await Assert.ThrowsAsync<NbdHostException>(() => _service.Client.StartExportAsync(
            new ExportSpec { Name = "m", MemorySize = 4096, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }, replace: false, persistent: false, CancellationToken.None));
        Assert.Equal(ErrorIds.InvalidArgument, e.ErrorId);
        _service.Service.RequestStop("test");
        var refused = await Assert.ThrowsAsync<NbdHostException>(() => _service.Client.StartExportAsync(
            new ExportSpec { Name = "m", MemorySize = 4096, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }, replace: false, persistent: true, CancellationToken.None));
        Assert.Equal(ErrorIds.ServiceUnavailable, refused.ErrorId);
        Assert.True((await _service.Client.GetStatusAsync(CancellationToken.None)).IsStopping);
    }

    [Fact]
    public async Task Device_records_are_written_taken_back_through_their_kind_and_kept_when_that_fails()
    {
        var kind = new FakeDeviceKind();
        await _service.StartInProcessAsync(addKinds: r => r.AddKind(kind));
        var first = await _service.Client.AttachDeviceAsync(new DeviceRequest { Kind = "fake", Uris = ["nbd://server/a"], Persistent = true }, CancellationToken.None);
        Assert.True(first.Changed);
        var same = await _service.Client.AttachDeviceAsync(new DeviceRequest { Kind = "fake", Uris = ["nbd://server/a"], Persistent = true }, CancellationToken.None);
        Assert.False(same.Changed);
        Assert.Equal(first.Value.Id, same.Value.Id);
        var second = await _service.Client.AttachDeviceAsync(new DeviceRequest { Kind = "fake", Uris = ["nbd://server/a"], Persistent = true, NewDevice = true }, CancellationToken.None);
        Assert.NotEqual(first.Value.Id, second.Value.Id);
        var passing = await _service.Client.AttachDeviceAsync(new DeviceRequest { Kind = "fake", Uris = ["nbd://server/b"] }, CancellationToken.None);
        Assert.False(passing.Value.IsPersistent);
        var saved = JsonDocument.Parse(File.ReadAllText(_service.Paths.ConfigurationFile)).RootElement.GetProperty("devices");
        Assert.Equal(2, saved.GetArrayLength());

        await _service.StopInProcessAsync();
        Assert.Equal(3, kind.Released);
        kind.FailAdoptionOf = second.Value.Id;
        await _service.StartInProcessAsync(addKinds: r => r.AddKind(kind));
        var devices = await _service.Client.GetDevicesAsync(CancellationToken.None);
        Assert.Equal(2, devices.Count);
        var adopted = devices.Single(d => d.Id == first.Value.Id);
        Assert.Equal("Connected", adopted.State);
        Assert.Contains(adopted.History, h => h.Event == "Adopted");
        var failed = devices.Single(d => d.Id == second.Value.Id);
        Assert.Equal("Failed", failed.State);
        Assert.Contains("could not be taken back", failed.Message);
        Assert.Contains((await _service.Client.GetStatusAsync(CancellationToken.None)).Problems, p => p.Contains(second.Value.Id));

        // A failed device is forgotten by a detach; the adopted one is detached through its kind.
        await _service.Client.DetachDeviceAsync(failed.Device!, force: false, TimeSpan.FromSeconds(5), CancellationToken.None);
        await _service.Client.DetachDeviceAsync(adopted.Device!, force: false, TimeSpan.FromSeconds(5), CancellationToken.None);
        Assert.Equal(1, kind.Detached);
        Assert.Equal(0, JsonDocument.Parse(File.ReadAllText(_service.Paths.ConfigurationFile)).RootElement.GetProperty("devices").GetArrayLength());
    }

    [Fact]
    public async Task A_record_of_an_unknown_kind_is_kept_unchanged_through_a_restart_and_shown_as_failed()
    {
        Directory.CreateDirectory(_service.Paths.ConfigDirectory);
        File.WriteAllText(_service.Paths.ConfigurationFile, """
            { "version": 1, "devices": [ { "kind": "from-the-future", "id": "f1", "device": "/dev/loop9", "settings": { "mount": "/run/x", "n": 3 } } ] }
            """);
        await _service.StartInProcessAsync();
        var device = Assert.Single(await _service.Client.GetDevicesAsync(CancellationToken.None));
        Assert.Equal(("f1", "Failed", "/dev/loop9"), (device.Id, device.State, device.Device));
        Assert.Contains("does not know", device.Message);
        // A change elsewhere rewrites the file; the record survives as it was.
        await _service.Client.StartExportAsync(new ExportSpec { Name = "m", MemorySize = 4096, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }, false, true, CancellationToken.None);
        var record = JsonDocument.Parse(File.ReadAllText(_service.Paths.ConfigurationFile)).RootElement.GetProperty("devices")[0];
        Assert.Equal(3, record.GetProperty("settings").GetProperty("n").GetInt32());
    }

    /// <summary>A device kind without a kernel behind it, to test the registry seam.</summary>
    private sealed class FakeDeviceKind : IDeviceKind
    {
        private int _next;
        public int Released;
        public int Detached;
        public string? FailAdoptionOf { get; set; }

        public string Name => "fake";

        public Task<IManagedDevice> AttachAsync(DeviceRequest request, DeviceContext context, CancellationToken cancellationToken)
        {
            int n = Interlocked.Increment(ref _next);
            var record = new DeviceRecord { Kind = Name, Id = $"fake{n}-{Guid.NewGuid():N}"[..12], Device = $"/dev/fake{n}", Settings = DeviceRecord.ToSettings(new { uri = request.Uris[0] }) };
            return Task.FromResult<IManagedDevice>(new FakeDevice(this, record, request.Persistent, "Attached"));
        }

        public Task<IManagedDevice> AdoptAsync(DeviceRecord record, DeviceContext context, CancellationToken cancellationToken)
        {
            if (record.Id == FailAdoptionOf)
                throw new InvalidOperationException("the fake device is gone");
            return Task.FromResult<IManagedDevice>(new FakeDevice(this, record, persistent: true, "Adopted"));
        }

        private sealed class FakeDevice(FakeDeviceKind kind, DeviceRecord record, bool persistent, string how) : IManagedDevice
        {
            private readonly DeviceHistory _history = Create(how);

            private static DeviceHistory Create(string how)
            {
                var history = new DeviceHistory();
                history.Add(how, how.ToLowerInvariant());
                return history;
            }

            public string Id => Record.Id;
            public DeviceRecord Record { get; } = record;
            public bool IsPersistent { get; } = persistent;

            public DeviceStatus GetStatus() => new()
            {
                Id = Id, Kind = "fake", Device = Record.Device, Uri = Record.Settings.GetProperty("uri").GetString(), IsPersistent = IsPersistent,
                Scope = HostScope.Service, ProcessId = Environment.ProcessId, History = _history.Snapshot(),
            };

            public bool Serves(DeviceRequest request) => request.Uris[0] == Record.Settings.GetProperty("uri").GetString();

            public Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken)
            {
                Interlocked.Increment(ref kind.Detached);
                return Task.CompletedTask;
            }

            public Task ReleaseAsync()
            {
                Interlocked.Increment(ref kind.Released);
                return Task.CompletedTask;
            }
        }
    }
}
