using System.Text.Json.Serialization;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// An export as a host reports it, the same whether it runs in this process or in the service (and so
/// serializable for the control socket). The module turns it into its NbdExport output in one place.
/// </summary>
public sealed record ExportInfo
{
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    public string? Path { get; init; }
    /// <summary>What the engine serves, e.g. "file:/srv/disk.img", "memory", "cow:file:/srv/base.img".</summary>
    public string Backend { get; init; } = "";
    public long Size { get; init; }
    public bool IsReadOnly { get; init; }
    public bool IsCopyOnWrite { get; init; }
    /// <summary>The IP addresses of its TCP listeners.</summary>
    public IReadOnlyList<string> ListenAddress { get; init; } = [];
    /// <summary>The TCP port really listened on (the chosen one when 0 was asked for); 0 without TCP listeners.</summary>
    public int Port { get; init; }
    /// <summary>The Unix socket it is served on, if any.</summary>
    public string? SocketPath { get; init; }
    /// <summary>Every listener: "127.0.0.1:10809", "[::1]:10809", "/run/disk.sock".</summary>
    public IReadOnlyList<string> Listeners { get; init; } = [];
    public IReadOnlyList<string> AllowedClient { get; init; } = [];
    public int MaxConnections { get; init; }
    /// <summary>Running, Stopped, or Failed (a persistent export the service could not start).</summary>
    public string State { get; init; } = "Running";
    /// <summary>Why the export is not running (State Failed).</summary>
    public string? StatusMessage { get; init; }
    public int ClientCount { get; init; }
    public long TotalConnections { get; init; }
    public DateTimeOffset StartTime { get; init; }
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    public string Uri { get; init; } = "";
    /// <summary>None, Allow or Require.</summary>
    public string TlsMode { get; init; } = "None";
    public bool IsTlsOnly { get; init; }
    public string? CertificateSubject { get; init; }
    public string? CertificateThumbprint { get; init; }
    public bool RequiresClientCertificate { get; init; }
    [JsonConverter(typeof(JsonStringEnumConverter<HostScope>))]
    public HostScope Scope { get; init; }
    /// <summary>Kept in the service's configuration: comes back after a service restart.</summary>
    public bool IsPersistent { get; init; }
    /// <summary>Process id of the process serving it.</summary>
    public int ProcessId { get; init; }
}

/// <summary>The answer to a change request: the object, and whether anything changed (Ansible's "changed").</summary>
public sealed record HostResult<T>(T Value, bool Changed);
