using System.Management.Automation;
using NbdPowerShell.Completers;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Security;
using NbdPowerShell.Engine.Server;

namespace NbdPowerShell.Commands;

/// <summary>Serves a file, block device or memory disk over NBD from this PowerShell process.</summary>
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

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string ListenAddress { get; set; } = "127.0.0.1";

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
        string? socketPath = SocketPath is null ? null : SessionState.Path.GetUnresolvedProviderPathFromPSPath(SocketPath);
        var request = new ExportRequest
        {
            Name = name,
            Description = Description,
            Path = path,
            MemorySize = Size,
            ReadOnly = ReadOnly,
            CopyOnWrite = CopyOnWrite,
            ListenAddress = ListenAddress,
            Port = Port,
            SocketPath = socketPath,
            AllowedClient = AllowedClient,
            MaxConnections = MaxConnections,
        };
        string where = socketPath ?? $"{ListenAddress}:{(Port == 0 ? "any free port" : Port)}";
        if (!ShouldProcess($"{path ?? $"memory ({Size} bytes)"} as '{name}' on {where}", "Start NBD export"))
            return;
        TryRun(() =>
        {
            var tls = BuildTls();
            WriteObject(ExportHost.Default.Start(request with { Tls = tls, TlsOnly = TlsOnly }));
        }, name);
        DrainEngineLog();
    }

    /// <summary>Server TLS from the parameters; null for no TLS. Throws ArgumentException for contradictions.</summary>
    private TlsOptions? BuildTls()
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
        X509Certificate2 certificate;
        if (Certificate is not null)
        {
            if (!Certificate.HasPrivateKey)
                throw new ArgumentException($"-Certificate '{Certificate.Subject}' has no private key; a server certificate needs one.");
            certificate = Certificate;
        }
        else
        {
            certificate = CertificateFiles.LoadWithKey(Resolve(CertificatePath!), KeyPath is null ? null : Resolve(KeyPath));
        }
        return new TlsOptions(certificate, mode) { ClientCertificateAuthorities = LoadAuthorities() };
    }

    private X509Certificate2Collection? LoadAuthorities()
    {
        if (ClientCertificateAuthority is null)
            return null;
        var all = new X509Certificate2Collection();
        foreach (var item in ClientCertificateAuthority)
        {
            switch (item is PSObject pso ? pso.BaseObject : item)
            {
                case X509Certificate2 certificate:
                    all.Add(certificate);
                    break;
                case string path:
                    all.AddRange(CertificateFiles.LoadAuthorities(Resolve(path)));
                    break;
                case FileInfo file:
                    all.AddRange(CertificateFiles.LoadAuthorities(file.FullName));
                    break;
                default:
                    throw new ArgumentException($"-ClientCertificateAuthority takes PEM file paths or X509Certificate2 objects, not '{item}'.");
            }
        }
        return all;
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
