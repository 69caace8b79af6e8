using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Service;

/// <summary>A persistent export as the configuration keeps it: its definition, and the port it got when it asked for port 0.</summary>
public sealed record PersistedExport(ExportSpec Spec, int? BoundPort);

/// <summary>What the configuration file held when it was loaded: the valid entries, and what was wrong with the others.</summary>
public sealed record ServiceConfiguration
{
    public int ShutdownGraceSeconds { get; init; } = ConfigurationStore.DefaultShutdownGraceSeconds;
    public IReadOnlyList<PersistedExport> Exports { get; init; } = [];
    public IReadOnlyList<DeviceRecord> Devices { get; init; } = [];
    /// <summary>One line per entry that was skipped, and why.</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];
}

/// <summary>
/// The service's configuration file (JSON, human-readable). Loading validates every entry on its own: a bad
/// entry is reported and skipped, never fatal for the others, and kept verbatim when the file is written again,
/// so nothing an admin (or a newer version) wrote is lost. Writes are atomic: a temporary file in the same
/// directory, fsync, rename over the old one, fsync of the directory.
/// </summary>
public sealed class ConfigurationStore
{
    public const int Version = 1;
    public const int DefaultShutdownGraceSeconds = 30;
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
    };

    private readonly object _gate = new();
    private readonly ILogger _log;
    private List<JsonNode> _keptExports = [];
    private List<JsonNode> _keptDevices = [];
    private int _grace = DefaultShutdownGraceSeconds;

    public ConfigurationStore(string path, ILogger log)
    {
        Path = path;
        _log = log;
    }

    public string Path { get; }

    /// <summary>Reads the file; a missing file is an empty configuration. Never throws for bad content: it reports it.</summary>
    public ServiceConfiguration Load()
    {
        lock (_gate)
        {
            _keptExports = [];
            _keptDevices = [];
            _grace = DefaultShutdownGraceSeconds;
            if (!File.Exists(Path))
                return new ServiceConfiguration();
            var problems = new List<string>();
            JsonNode? root;
            try
            {
                root = JsonNode.Parse(File.ReadAllText(Path), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            }
            catch (JsonException e)
            {
                // Keep the broken file for the admin and start empty rather than not at all.
                string saved = Path + ".invalid-" + DateTime.UtcNow.ToString("yyyyMMddTHHmmssZ", System.Globalization.CultureInfo.InvariantCulture);
                File.Copy(Path, saved, overwrite: true);
                string message = $"{Path} is not valid JSON ({e.Message}); it was copied to {saved} and the service starts without persistent exports or devices.";
                _log.LogError("{Problem}", message);
                return new ServiceConfiguration { Problems = [message] };
            }
            if (root is not JsonObject top)
                return new ServiceConfiguration { Problems = [$"{Path} does not hold a JSON object; nothing was loaded."] };
            if (top["version"] is JsonValue v && v.TryGetValue(out int version) && version > Version)
                problems.Add($"{Path} has version {version}, newer than this service ({Version}); entries it does not understand are kept unchanged.");
            if (top["shutdownGraceSeconds"] is JsonValue g && g.TryGetValue(out int grace))
            {
                if (grace is >= 1 and <= 3600)
                    _grace = grace;
                else
                    problems.Add($"shutdownGraceSeconds {grace} is not in 1..3600; using {DefaultShutdownGraceSeconds}.");
            }

            var exports = new List<PersistedExport>();
            var names = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            int i = 0;
            foreach (var node in top["exports"] as JsonArray ?? [])
            {
                string where = $"exports[{i++}]";
                try
                {
                    if (node is not JsonObject entry)
                        throw new FormatException("not a JSON object");
                    int? boundPort = entry["boundPort"] is JsonValue b && b.TryGetValue(out int p) && p is > 0 and < 65536 ? p : null;
                    var spec = entry.Deserialize<ExportSpec>(Json) ?? throw new FormatException("empty");
                    spec.Validate(persistent: true);
                    if (!names.Add(spec.Name))
                        throw new FormatException($"a second export named '{spec.Name}'");
                    exports.Add(new PersistedExport(spec, boundPort));
                }
                catch (Exception e) when (e is JsonException or FormatException or ArgumentException or InvalidOperationException or NotSupportedException)
                {
                    problems.Add($"{where} ({NameOf(node)}) was skipped: {e.Message} It stays in the file until fixed or removed.");
                    if (node is not null)
                        _keptExports.Add(node.DeepClone());
                }
            }

            var devices = new List<DeviceRecord>();
            var ids = new HashSet<string>(StringComparer.Ordinal);
            i = 0;
            foreach (var node in top["devices"] as JsonArray ?? [])
            {
                string where = $"devices[{i++}]";
                try
                {
                    if (node is not JsonObject entry)
                        throw new FormatException("not a JSON object");
                    string kind = (string?)entry["kind"] ?? throw new FormatException("no \"kind\"");
                    string id = (string?)entry["id"] ?? throw new FormatException("no \"id\"");
                    if (entry["settings"] is not JsonObject settings)
                        throw new FormatException("no \"settings\" object");
                    if (!ids.Add(id))
                        throw new FormatException($"a second device with id '{id}'");
                    devices.Add(new DeviceRecord
                    {
                        Kind = kind,
                        Id = id,
                        Device = (string?)entry["device"],
                        Settings = JsonSerializer.SerializeToElement(settings),
                    });
                }
                catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
                {
                    problems.Add($"{where} was skipped: {e.Message}. It stays in the file until fixed or removed.");
                    if (node is not null)
                        _keptDevices.Add(node.DeepClone());
                }
            }
            foreach (var problem in problems)
                _log.LogWarning("Configuration {Path}: {Problem}", Path, problem);
            return new ServiceConfiguration { ShutdownGraceSeconds = _grace, Exports = exports, Devices = devices, Problems = problems };
        }
    }

    private static string NameOf(JsonNode? node) =>
        node is JsonObject o && o["name"] is JsonValue n && n.TryGetValue(out string? name) ? $"'{name}'" : "no name";

    /// <summary>Writes the current persistent exports and devices, with every entry the last load could not read, atomically.</summary>
    public void Save(IEnumerable<PersistedExport> exports, IEnumerable<DeviceRecord> devices)
    {
        lock (_gate)
        {
            var exportArray = new JsonArray();
            foreach (var export in exports.OrderBy(e => e.Spec.Name, StringComparer.OrdinalIgnoreCase))
            {
                var node = JsonSerializer.SerializeToNode(export.Spec, Json)!.AsObject();
                if (export.BoundPort is int port)
                    node["boundPort"] = port;
                exportArray.Add(node);
            }
            foreach (var kept in _keptExports)
                exportArray.Add(kept.DeepClone());
            var deviceArray = new JsonArray();
            foreach (var device in devices)
            {
                deviceArray.Add(new JsonObject
                {
                    ["kind"] = device.Kind,
                    ["id"] = device.Id,
                    ["device"] = device.Device,
                    ["settings"] = JsonNode.Parse(device.Settings.GetRawText()),
                });
            }
            foreach (var kept in _keptDevices)
                deviceArray.Add(kept.DeepClone());
            var root = new JsonObject
            {
                ["version"] = Version,
                ["shutdownGraceSeconds"] = _grace,
                ["exports"] = exportArray,
                ["devices"] = deviceArray,
            };
            WriteAtomically(Path, root.ToJsonString(Json) + "\n", UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
    }

    /// <summary>Temporary file in the same directory, fsync, rename over the target, fsync the directory.</summary>
    internal static void WriteAtomically(string path, string text, UnixFileMode mode)
    {
        string directory = System.IO.Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(directory);
        string temporary = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(path)}.{Environment.ProcessId}.tmp");
        try
        {
            var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, Share = FileShare.None };
            if (!OperatingSystem.IsWindows())
                options.UnixCreateMode = mode;
            using (var stream = new FileStream(temporary, options))
            {
                stream.Write(Encoding.UTF8.GetBytes(text));
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
            Libc.SyncDirectory(directory);
        }
        catch
        {
            try { File.Delete(temporary); } catch (IOException) { }
            throw;
        }
    }
}
