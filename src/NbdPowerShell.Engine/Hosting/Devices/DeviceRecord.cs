using System.Text.Json;

namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// A device as the service's configuration keeps it: which kind owns it, a stable id, and settings only that
/// kind reads. The registry stores records it cannot read (a kind it does not know, bad settings) unchanged,
/// so a configuration written by a newer version loses nothing.
/// </summary>
public sealed record DeviceRecord
{
    /// <summary>The <see cref="IDeviceKind.Name"/> that adopts it, e.g. "kernel".</summary>
    public required string Kind { get; init; }
    /// <summary>Unique within the registry; stays the same across restarts.</summary>
    public required string Id { get; init; }
    /// <summary>The device node as last seen, e.g. /dev/nbd3 (for messages and Disconnect-NbdDevice of a device that failed to come back).</summary>
    public string? Device { get; init; }
    /// <summary>Kind-specific settings (a JSON object); read with <see cref="SettingsAs{T}"/>.</summary>
    public JsonElement Settings { get; init; }

    public T SettingsAs<T>() =>
        Settings.ValueKind == JsonValueKind.Object
            ? Settings.Deserialize<T>(DeviceJson.Options) ?? throw new FormatException($"Device {Id}: empty settings.")
            : throw new FormatException($"Device {Id} ({Kind}) has no settings object.");

    public static JsonElement ToSettings<T>(T settings) => JsonSerializer.SerializeToElement(settings, DeviceJson.Options);
}

/// <summary>How device settings are written: camelCase, enums as names, no nulls.</summary>
public static class DeviceJson
{
    public static JsonSerializerOptions Options { get; } = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() },
        WriteIndented = true,
    };
}
