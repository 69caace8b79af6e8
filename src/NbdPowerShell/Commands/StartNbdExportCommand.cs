using System.Management.Automation;
using NbdPowerShell.Completers;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Server;

namespace NbdPowerShell.Commands;

/// <summary>Serves a file, block device or memory disk over NBD from this PowerShell process, or, with -Persistent, from the NbdPowerShell service.</summary>
[Cmdlet(VerbsLifecycle.Start, "NbdExport", DefaultParameterSetName = PathSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(NbdExport))]
public sealed class StartNbdExportCommand : NbdCmdlet
{
    private const string PathSet = "Path";
    private const string MemorySet = "Memory";

    [Parameter(ParameterSetName = PathSet, Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("FullName")]
    [ValidateNotNullOrEmpty]
    public string Path { get; set; } = "";

    [Parameter(ParameterSetName = MemorySet, Mandatory = true)]
    public SwitchParameter Memory { get; set; }

    [Parameter(ParameterSetName = MemorySet, Mandatory = true)]
    [ValidateRange(1L, long.MaxValue)]
    public long Size { get; set; }

    [Parameter]
    [ValidateNotNull]
    public string? Name { get; set; }

    [Parameter]
    public string Description { get; set; } = "";

    [Parameter]
    public SwitchParameter ReadOnly { get; set; }

    [Parameter]
    public SwitchParameter CopyOnWrite { get; set; }

    /// <summary>One or more IP addresses to listen on, all with -Port (e.g. 0.0.0.0 and :: for IPv4 and IPv6).</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[] ListenAddress { get; set; } = ["127.0.0.1"];

    [Parameter]
    [ValidateRange(0, 65535)]
    public int Port { get; set; } = NbdLimits.DefaultPort;

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? SocketPath { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[] AllowedClient { get; set; } = [];

    [Parameter]
    [ValidateRange(0, int.MaxValue)]
    public int MaxConnections { get; set; }

    /// <summary>Server certificate with its private key (turns TLS on; -TlsMode defaults to Require).</summary>
    [Parameter]
    [ValidateNotNull]
    public X509Certificate2? Certificate { get; set; }

    /// <summary>PEM certificate (with -KeyPath, or the key in the same file) or a PKCS#12 file without a password.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? CertificatePath { get; set; }

    /// <summary>PEM private key of -CertificatePath.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? KeyPath { get; set; }

    /// <summary>None, Allow or Require; Require when a certificate is given, else None.</summary>
    [Parameter]
    [ValidateSet("None", "Allow", "Require")]
    public string? TlsMode { get; set; }

    /// <summary>Authorities (PEM file paths or X509Certificate2 objects) whose client certificates are required (mutual TLS).</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public object[]? ClientCertificateAuthority { get; set; }

    /// <summary>Only TLS clients see and open this export; others on the listener stay plain (TlsMode Allow).</summary>
    [Parameter]
    public SwitchParameter TlsOnly { get; set; }

    /// <summary>Replace an export of the same name that has a different definition (its clients are dropped).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    /// <summary>Hand the export to the NbdPowerShell service (started on demand): it outlives this pwsh and comes back after a service restart.</summary>
    [Parameter]
    public SwitchParameter Persistent { get; set; }

    protected override void ProcessRecord()
    {
        DrainEngineLog();
        string? path = null;
        if (ParameterSetName == PathSet)
        {
            path = ResolvePath(Path);
            if (path is null)
                return;
        }
        string name = Name ?? (path is null ? "memory" : System.IO.Path.GetFileNameWithoutExtension(path));
        var listeners = BuildListeners();
        string where = string.Join(" and ", listeners.Select(l => l.IsUnix || l.Port != 0 ? l.ToString() : $"{l.Address} (any free port)"));
        if (!ShouldProcess($"{path ?? $"memory ({Size} bytes)"} as '{name}' on {where}{(Persistent ? " in the NbdPowerShell service, persistently" : "")}", "Start NBD export"))
            return;
        TryRun(() =>
        {
            var spec = new ExportSpec
            {
                Name = name,
                Description = Description,
                Path = path,
                MemorySize = Size,
                ReadOnly = ReadOnly,
                CopyOnWrite = CopyOnWrite,
                Listeners = listeners,
                AllowedClients = AllowedClient,
                MaxConnections = MaxConnections,
                Tls = BuildTls(),
                TlsOnly = TlsOnly,
            };
            if (Persistent)
                spec.Validate(persistent: true);
            INbdHost host = Persistent ? StartService() : Hosts.Process;
            var result = Wait(host.StartExportAsync(spec, Force, Persistent, CancelToken), "Start-NbdExport", $"Starting export '{name}'");
            string by = Persistent ? "the NbdPowerShell service (persistent)" : "this PowerShell process";
            WriteVerbose(result.Changed
                ? $"Started export '{name}' at {result.Value.Uri}, served by {by}."
                : $"Export '{name}' already runs with this definition at {result.Value.Uri}, served by {by}; nothing changed.");
            WriteObject(OutputMapper.ToExport(result.Value, result.Changed));
        }, name);
        DrainEngineLog();
    }

    /// <summary>
    /// -SocketPath alone serves on that Unix socket only; with -Port or -ListenAddress it is served there too.
    /// Every -ListenAddress listens on -Port.
    /// </summary>
    private List<ListenerSpec> BuildListeners()
    {
        var listeners = new List<ListenerSpec>();
        bool tcp = SocketPath is null || MyInvocation.BoundParameters.ContainsKey(nameof(Port)) || MyInvocation.BoundParameters.ContainsKey(nameof(ListenAddress));
        if (tcp)
            listeners.AddRange(ListenAddress.Select(a => ListenerSpec.Tcp(a.Trim(), Port)));
        if (SocketPath is not null)
            listeners.Add(ListenerSpec.Unix(Resolve(SocketPath)));
        return listeners;
    }

    /// <summary>Server TLS from the parameters; null for no TLS. Throws ArgumentException for contradictions.</summary>
    private ServerTlsSpec? BuildTls()
    {
        if (Certificate is not null && CertificatePath is not null)
            throw new ArgumentException("Give either -Certificate or -CertificatePath, not both.");
        if (KeyPath is not null && CertificatePath is null)
            throw new ArgumentException("-KeyPath needs -CertificatePath.");
        bool hasCertificate = Certificate is not null || CertificatePath is not null;
        var mode = TlsMode is null
            ? (hasCertificate ? (TlsOnly ? Engine.Server.TlsMode.Allow : Engine.Server.TlsMode.Require) : Engine.Server.TlsMode.None)
            : Enum.Parse<TlsMode>(TlsMode, ignoreCase: true);
        if (mode == Engine.Server.TlsMode.None)
        {
            if (hasCertificate)
                throw new ArgumentException("-TlsMode None contradicts the certificate given; drop the certificate or use -TlsMode Allow or Require.");
            if (TlsOnly || ClientCertificateAuthority is not null)
                throw new ArgumentException("-TlsOnly and -ClientCertificateAuthority need TLS: give a server certificate with -Certificate or -CertificatePath/-KeyPath.");
            return null;
        }
        if (!hasCertificate)
            throw new ArgumentException($"-TlsMode {mode} needs a server certificate: give -Certificate, or -CertificatePath (and -KeyPath).");
        if (Certificate is { HasPrivateKey: false })
            throw new ArgumentException($"-Certificate '{Certificate.Subject}' has no private key; a server certificate needs one.");
        var (paths, objects) = SplitAuthorities();
        return new ServerTlsSpec
        {
            Mode = mode,
            Certificate = Certificate,
            CertificatePath = CertificatePath is null ? null : Resolve(CertificatePath),
            KeyPath = KeyPath is null ? null : Resolve(KeyPath),
            ClientCertificateAuthorityPaths = paths,
            ClientCertificateAuthorities = objects,
        };
    }

    /// <summary>-ClientCertificateAuthority items: PEM paths (resolved) and certificate objects.</summary>
    private (List<string> Paths, List<X509Certificate2> Objects) SplitAuthorities()
    {
        var paths = new List<string>();
        var objects = new List<X509Certificate2>();
        foreach (var item in ClientCertificateAuthority ?? [])
        {
            switch (item is PSObject pso ? pso.BaseObject : item)
            {
                case X509Certificate2 certificate:
                    objects.Add(certificate);
                    break;
                case string path:
                    paths.Add(Resolve(path));
                    break;
                case FileInfo file:
                    paths.Add(file.FullName);
                    break;
                default:
                    throw new ArgumentException($"-ClientCertificateAuthority takes PEM file paths or X509Certificate2 objects, not '{item}'.");
            }
        }
        return (paths, objects);
    }

    private string Resolve(string path) => SessionState.Path.GetUnresolvedProviderPathFromPSPath(path);

    private string? ResolvePath(string input)
    {
        string resolved;
        try
        {
            var paths = GetResolvedProviderPathFromPSPath(input, out var provider);
            if (provider.Name != "FileSystem" || paths.Count != 1)
            {
                WriteNbdError(ErrorIds.InvalidArgument, $"-Path '{input}' must name exactly one file or block device.", input);
                return null;
            }
            resolved = paths[0];
        }
        catch (ItemNotFoundException)
        {
            WriteNbdError(ErrorIds.PathNotFound, $"Cannot find '{input}': -Path must name an existing file or block device (create a file with: truncate -s 1G disk.img).", input);
            return null;
        }
        if (Directory.Exists(resolved))
        {
            WriteNbdError(ErrorIds.InvalidArgument, $"'{resolved}' is a directory; -Path must name a file or block device.", input);
            return null;
        }
        return resolved;
    }
}
