using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Tests.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Service;

/// <summary>The configuration file: validated per entry, bad entries reported and kept, written atomically.</summary>
public sealed class ConfigurationStoreTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    private ConfigurationStore Store => new(_scratch.File("nbdpowershell.json"), NullLogger.Instance);

    private static ExportSpec Export(string name, string path) =>
        new() { Name = name, Path = path, Listeners = [ListenerSpec.Tcp("0.0.0.0", 0), ListenerSpec.Unix("/run/" + name + ".sock")] };

    [Fact]
    public void A_missing_file_is_an_empty_configuration()
    {
        var c = Store.Load();
        Assert.Empty(c.Exports);
        Assert.Empty(c.Devices);
        Assert.Empty(c.Problems);
        Assert.Equal(ConfigurationStore.DefaultShutdownGraceSeconds, c.ShutdownGraceSeconds);
    }

    [Fact]
    public void What_is_saved_loads_back_the_same_and_the_file_is_root_only()
    {
        var store = Store;
        store.Load();
        var spec = Export("disk", "/srv/disk.img") with
        {
            Tls = new ServerTlsSpec { Mode = NbdPowerShell.Engine.Server.TlsMode.Allow, CertificatePath = "/etc/pki/c.pem", KeyPath = "/etc/pki/k.pem", ClientCertificateAuthorityPaths = ["/etc/pki/ca.pem"] },
            TlsOnly = true, AllowedClients = ["10.0.0.0/8"], MaxConnections = 4, Description = "d",
        };
        var device = new DeviceRecord { Kind = "kernel", Id = "abc", Device = "/dev/nbd3", Settings = DeviceRecord.ToSettings(new { uri = "nbd://h/x", index = 3 }) };
        store.Save([new PersistedExport(spec, 41234)], [device]);

        var loaded = Store.Load();
        Assert.Empty(loaded.Problems);
        var export = Assert.Single(loaded.Exports);
        Assert.Empty(export.Spec.DifferencesFrom(spec));
        Assert.Equal(41234, export.BoundPort);
        var d = Assert.Single(loaded.Devices);
        Assert.Equal(("kernel", "abc", "/dev/nbd3"), (d.Kind, d.Id, d.Device));
        Assert.Equal(3, d.Settings.GetProperty("index").GetInt32());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(_scratch.File("nbdpowershell.json")));
        Assert.Empty(Directory.GetFiles(_scratch.Path, ".*.tmp"));
        // Human-readable: indented JSON an admin can edit.
        Assert.Contains("\n  \"exports\": [", File.ReadAllText(_scratch.File("nbdpowershell.json")));
    }

    [Fact]
    public void Bad_entries_are_reported_and_skipped_and_kept_when_the_file_is_written_again()
    {
        File.WriteAllText(_scratch.File("nbdpowershell.json"), """
            {
              "version": 1,
              "shutdownGraceSeconds": 12,
              "exports": [
                { "name": "good", "path": "/srv/good.img", "listeners": [ { "address": "127.0.0.1", "port": 10809 } ] },
                { "name": "relative", "path": "disk.img", "listeners": [ { "address": "127.0.0.1", "port": 10809 } ] },
                { "name": "noListener", "path": "/srv/x.img" },
                { "name": "badAddress", "memorySize": 1024, "listeners": [ { "address": "not-an-ip", "port": 1 } ] },
                { "name": "good", "memorySize": 1024, "listeners": [ { "socketPath": "/run/dup.sock" } ] },
                42
              ],
              "devices": [
                { "kind": "fuse", "id": "later", "device": "/dev/loop7", "settings": { "mount": "/run/x" } },
                { "kind": "kernel", "settings": { } },
                "garbage"
              ]
            }
            """);
        var store = Store;
        var c = store.Load();
        Assert.Equal(12, c.ShutdownGraceSeconds);
        Assert.Equal("good", Assert.Single(c.Exports).Spec.Name);
        // An unknown kind is the registry's business (it keeps the record); a record without an id is not a record.
        Assert.Equal("later", Assert.Single(c.Devices).Id);
        Assert.Equal(7, c.Problems.Count);
        Assert.Contains(c.Problems, p => p.Contains("'relative'") && p.Contains("absolute"));
        Assert.Contains(c.Problems, p => p.Contains("'noListener'") && p.Contains("listener"));
        Assert.Contains(c.Problems, p => p.Contains("'badAddress'") && p.Contains("not-an-ip"));
        Assert.Contains(c.Problems, p => p.Contains("second export named 'good'"));
        Assert.Contains(c.Problems, p => p.Contains("no \"id\""));

        store.Save(c.Exports, c.Devices);
        var root = JsonNode.Parse(File.ReadAllText(_scratch.File("nbdpowershell.json")))!;
        Assert.Equal(6, root["exports"]!.AsArray().Count);
        Assert.Equal(3, root["devices"]!.AsArray().Count);
        Assert.Equal(12, (int)root["shutdownGraceSeconds"]!);
        Assert.Equal(7, Store.Load().Problems.Count);
    }

    [Fact]
    public void A_file_that_is_not_JSON_is_copied_aside_and_the_service_starts_empty()
    {
        File.WriteAllText(_scratch.File("nbdpowershell.json"), "{ this is not json");
        var c = Store.Load();
        Assert.Empty(c.Exports);
        Assert.Contains("is not valid JSON", Assert.Single(c.Problems));
        Assert.Single(Directory.GetFiles(_scratch.Path, "nbdpowershell.json.invalid-*"));
    }

    [Fact]
    public void Persistent_exports_must_name_TLS_files_not_objects()
    {
        var spec = Export("t", "/srv/t.img") with { Tls = new ServerTlsSpec { CertificatePath = "relative.pem" } };
        Assert.Contains("absolute", Assert.Throws<ArgumentException>(() => spec.Validate(persistent: true)).Message);
    }
}
