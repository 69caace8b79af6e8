using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Serialization;
using NbdPowerShell.Engine.Server;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// What to serve and where: everything Start-NbdExport takes, in a form that the service writes to its
/// configuration file (so it holds paths, never key material or live objects). In-process exports may also
/// carry certificate objects in <see cref="ServerTlsSpec"/>; those cannot be persisted.
/// </summary>
public sealed record ExportSpec
{
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    /// <summary>A full path of a file or block device; null for a memory export.</summary>
    public string? Path { get; init; }
    /// <summary>Size in bytes of a memory export.</summary>
    public long MemorySize { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Writes go to a memory overlay; the file is opened read-only and never modified.</summary>
    public bool CopyOnWrite { get; init; }
    /// <summary>Where it is served: one or more TCP addresses and Unix sockets (nbd-server's duallisten and more).</summary>
    public IReadOnlyList<ListenerSpec> Listeners { get; init; } = [];
    /// <summary>IP addresses and CIDR prefixes allowed to use it; empty allows everyone.</summary>
    public IReadOnlyList<string> AllowedClients { get; init; } = [];
    /// <summary>Most simultaneous connections; 0 = unlimited.</summary>
    public int MaxConnections { get; init; }
    /// <summary>Server TLS of its listeners; null serves without TLS.</summary>
    public ServerTlsSpec? Tls { get; init; }
    /// <summary>Only TLS clients see and open it (SELECTIVETLS under TlsMode Allow).</summary>
    public bool TlsOnly { get; init; }

    /// <summary>Throws ArgumentException naming what is wrong; <paramref name="persistent"/> also demands a file-only definition.</summary>
    public void Validate(bool persistent)
    {
        if (Name is null)
            throw new ArgumentException("An export needs a name.");
        if (System.Text.Encoding.UTF8.GetByteCount(Name) > Protocol.NbdLimits.MaxStringLength)
            throw new ArgumentException("Export names are limited to 4096 bytes.");
        if (Path is null && MemorySize <= 0)
            throw new ArgumentException($"Export '{Name}' needs a path or a memory size greater than 0.");
        if (Path is not null && !System.IO.Path.IsPathFullyQualified(Path))
            throw new ArgumentException($"Export '{Name}': the path '{Path}' must be absolute.");
        if (Path is null && CopyOnWrite)
            throw new ArgumentException($"Export '{Name}': copy-on-write needs a file or block device to copy.");
        if (Listeners.Count == 0)
            throw new ArgumentException($"Export '{Name}' needs at least one listener (a TCP address and port, or a Unix socket path).");
        foreach (var listener in Listeners)
            listener.Validate();
        if (Listeners.Distinct().Count() != Listeners.Count)
            throw new ArgumentException($"Export '{Name}' names the same listener twice.");
        var ports = Listeners.Where(l => !l.IsUnix).Select(l => l.Port).Distinct().ToList();
        if (ports.Count > 1 && ports.Contains(0))
            throw new ArgumentException($"Export '{Name}': port 0 (any free port) cannot be mixed with fixed ports; the addresses share the port chosen for the first.");
        if (MaxConnections < 0)
            throw new ArgumentException($"Export '{Name}': the connection limit cannot be negative.");
        if (AllowedClients.Count > 0)
        {
            try { AddressFilter.Parse(AllowedClients); }
            catch (FormatException e) { throw new ArgumentException($"Export '{Name}': {e.Message}", e); }
        }
        if (Tls is null && TlsOnly)
            throw new ArgumentException($"Export '{Name}' is TLS-only but has no server certificate.");
        Tls?.Validate(Name, persistent);
    }

    /// <summary>The settings in which this definition differs from <paramref name="other"/>, for "different definition" errors.</summary>
    public IReadOnlyList<string> DifferencesFrom(ExportSpec other)
    {
        var differences = new List<string>();
        void Compare<T>(string what, T mine, T theirs)
        {
            if (!EqualityComparer<T>.Default.Equals(mine, theirs))
                differences.Add($"{what} {Show(theirs)} -> {Show(mine)}");
        }
        Compare("Description", Description, other.Description);
        Compare("Path", Path, other.Path);
        Compare("Size", MemorySize, other.MemorySize);
        Compare("ReadOnly", ReadOnly, other.ReadOnly);
        Compare("CopyOnWrite", CopyOnWrite, other.CopyOnWrite);
        Compare("Listeners", string.Join(", ", Listeners), string.Join(", ", other.Listeners));
        Compare("AllowedClient", string.Join(", ", AllowedClients), string.Join(", ", other.AllowedClients));
        Compare("MaxConnections", MaxConnections, other.MaxConnections);
        Compare("TLS", Tls?.Describe() ?? "none", other.Tls?.Describe() ?? "none");
        Compare("TlsOnly", TlsOnly, other.TlsOnly);
        return differences;
    }

    private static string Show<T>(T value) => value switch
    {
        null => "(none)",
        string s => $"'{s}'",
        _ => value.ToString() ?? "",
    };
}

/// <summary>One place an export is served: a TCP address and port, or a Unix socket path.</summary>
public sealed record ListenerSpec
{
    /// <summary>IP address for TCP (127.0.0.1, ::1, 0.0.0.0, ::); null for a Unix socket.</summary>
    public string? Address { get; init; }
    /// <summary>TCP port; 0 picks a free one.</summary>
    public int Port { get; init; }
    /// <summary>Full path of the Unix socket; null for TCP.</summary>
    public string? SocketPath { get; init; }

    [JsonIgnore]
    public bool IsUnix => SocketPath is not null;

    public static ListenerSpec Tcp(string address, int port) => new() { Address = address, Port = port };

    public static ListenerSpec Unix(string socketPath) => new() { SocketPath = socketPath };

    public void Validate()
    {
        if ((Address is null) == (SocketPath is null))
            throw new ArgumentException("A listener is either a TCP address and port or a Unix socket path.");
        if (SocketPath is not null && !System.IO.Path.IsPathFullyQualified(SocketPath))
            throw new ArgumentException($"The socket path '{SocketPath}' must be absolute.");
        if (Address is not null && !IPAddress.TryParse(Address, out _))
            throw new ArgumentException($"-ListenAddress '{Address}' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1 or ::).");
        if (Address is not null && Port is < 0 or > 65535)
            throw new ArgumentException($"Port {Port} is not in 0..65535.");
    }

    public override string ToString() =>
        SocketPath ?? (Address!.Contains(':') ? $"[{Address}]:{Port}" : $"{Address}:{Port}");
}

/// <summary>
/// Server TLS for an export's listeners: PEM or PKCS#12 files (what the service can persist), or, in-process
/// only, certificate objects.
/// </summary>
public sealed record ServerTlsSpec
{
    /// <summary>Allow (STARTTLS offered, TLS-only exports need it) or Require (plain clients refused).</summary>
    [JsonConverter(typeof(JsonStringEnumConverter<TlsMode>))]
    public TlsMode Mode { get; init; } = TlsMode.Require;
    /// <summary>PEM certificate (with <see cref="KeyPath"/>, or the key in the same file), or PKCS#12 without a password.</summary>
    public string? CertificatePath { get; init; }
    public string? KeyPath { get; init; }
    /// <summary>PEM bundles of the authorities whose client certificates are required (mutual TLS).</summary>
    public IReadOnlyList<string> ClientCertificateAuthorityPaths { get; init; } = [];

    /// <summary>A certificate object with its private key (in-process exports only).</summary>
    [JsonIgnore]
    public X509Certificate2? Certificate { get; init; }

    /// <summary>Client authorities as objects (in-process exports only).</summary>
    [JsonIgnore]
    public IReadOnlyList<X509Certificate2> ClientCertificateAuthorities { get; init; } = [];

    internal void Validate(string export, bool persistent)
    {
        if (Mode == TlsMode.None)
            throw new ArgumentException($"Export '{export}': TLS mode None takes no certificate.");
        if ((Certificate is null) == (CertificatePath is null))
            throw new ArgumentException($"Export '{export}': TLS needs exactly one server certificate (a certificate object or a certificate file).");
        if (KeyPath is not null && CertificatePath is null)
            throw new ArgumentException($"Export '{export}': a key file needs a certificate file.");
        foreach (var path in ClientCertificateAuthorityPaths.Prepend(CertificatePath).Append(KeyPath).OfType<string>())
            if (!System.IO.Path.IsPathFullyQualified(path))
                throw new ArgumentException($"Export '{export}': the TLS file path '{path}' must be absolute.");
        if (persistent && (Certificate is not null || ClientCertificateAuthorities.Count > 0))
            throw new ArgumentException(
                $"Export '{export}': a persistent export keeps its TLS settings in the service's configuration file, so give them as files " +
                "(-CertificatePath, -KeyPath, -ClientCertificateAuthority <pem path>) instead of certificate objects.");
    }

    /// <summary>Loads the files (or takes the objects) into the server's TLS settings.</summary>
    public TlsOptions Load()
    {
        var certificate = Certificate ?? Security.CertificateFiles.LoadWithKey(CertificatePath!, KeyPath);
        if (!certificate.HasPrivateKey)
            throw new ArgumentException($"The server certificate '{certificate.Subject}' has no private key; a server certificate needs one.");
        X509Certificate2Collection? authorities = null;
        if (ClientCertificateAuthorityPaths.Count > 0 || ClientCertificateAuthorities.Count > 0)
        {
            authorities = new X509Certificate2Collection();
            foreach (var path in ClientCertificateAuthorityPaths)
                authorities.AddRange(Security.CertificateFiles.LoadAuthorities(path));
            foreach (var authority in ClientCertificateAuthorities)
                authorities.Add(authority);
        }
        return new TlsOptions(certificate, Mode) { ClientCertificateAuthorities = authorities };
    }

    /// <summary>Mode and the files or certificate thumbprints, never key material.</summary>
    public string Describe() =>
        $"{Mode} with {(Certificate is { } c ? $"certificate {c.Thumbprint}" : $"certificate file {CertificatePath}{(KeyPath is null ? "" : $" and key {KeyPath}")}")}" +
        (ClientCertificateAuthorityPaths.Count + ClientCertificateAuthorities.Count == 0 ? "" :
            " requiring client certificates from " + string.Join(", ", ClientCertificateAuthorityPaths.Concat(ClientCertificateAuthorities.Select(a => a.Thumbprint)).Order()));
}
