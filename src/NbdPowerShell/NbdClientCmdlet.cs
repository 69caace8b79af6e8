using System.Management.Automation;
using System.Security.Cryptography.X509Certificates;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell;

/// <summary>
/// Base of the cmdlets that talk to an NBD server as a client (Find-NbdExport, Connect-NbdDevice): the TLS
/// parameters. Any of them turns TLS on; then the client sends STARTTLS first and never falls back to plaintext.
/// </summary>
public abstract class NbdClientCmdlet : NbdCmdlet
{
    /// <summary>Negotiate TLS (STARTTLS) and refuse servers that do not offer it.</summary>
    [Parameter(ValueFromPipelineByPropertyName = true)]
    [Alias("IsTls")]
    public SwitchParameter UseTls { get; set; }

    /// <summary>PEM file with the authorities the server certificate must chain to (instead of the system store).</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? CertificateAuthority { get; set; }

    /// <summary>Certificate with private key to present when the server asks for one (mutual TLS).</summary>
    [Parameter]
    [ValidateNotNull]
    public X509Certificate2? ClientCertificate { get; set; }

    /// <summary>PEM or PKCS#12 file with the client certificate (and its key, unless -ClientKeyPath names it).</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? ClientCertificatePath { get; set; }

    /// <summary>PEM file with the private key of -ClientCertificatePath.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? ClientKeyPath { get; set; }

    /// <summary>Accept any server certificate: encryption without authentication.</summary>
    [Parameter]
    public SwitchParameter SkipCertificateCheck { get; set; }

    /// <summary>True when any TLS parameter was given.</summary>
    protected bool WantsTls => UseTls || CertificateAuthority is not null || ClientCertificate is not null || ClientCertificatePath is not null || SkipCertificateCheck;

    /// <summary>The client TLS settings from the parameters (paths resolved); null when no TLS parameter was given.</summary>
    protected ClientTlsSpec? BuildTlsSpec()
    {
        if (!WantsTls)
            return null;
        if (ClientCertificate is not null && ClientCertificatePath is not null)
            throw new ArgumentException("Give either -ClientCertificate or -ClientCertificatePath, not both.");
        if (ClientKeyPath is not null && ClientCertificatePath is null)
            throw new ArgumentException("-ClientKeyPath needs -ClientCertificatePath.");
        if (ClientCertificate is { HasPrivateKey: false })
            throw new ArgumentException($"-ClientCertificate '{ClientCertificate.Subject}' has no private key, so it cannot authenticate this client.");
        return new ClientTlsSpec
        {
            CertificateAuthorityPath = CertificateAuthority is null ? null : Resolve(CertificateAuthority),
            ClientCertificatePath = ClientCertificatePath is null ? null : Resolve(ClientCertificatePath),
            ClientKeyPath = ClientKeyPath is null ? null : Resolve(ClientKeyPath),
            ClientCertificate = ClientCertificate,
            SkipCertificateCheck = SkipCertificateCheck,
        };
    }

    /// <summary>
    /// Parses -Uri values (nbd://, nbds://, nbd+unix://, nbds+unix://); TLS parameters turn TLS on for each. Writes one
    /// NbdUriInvalid error per bad value and returns false when any was bad, so nothing runs on a partial list.
    /// </summary>
    protected bool TryParseUris(IEnumerable<string> texts, out List<NbdUri> uris)
    {
        uris = new List<NbdUri>();
        bool ok = true;
        foreach (var text in texts)
        {
            if (NbdUri.TryParse(text, out var uri, out var error))
                uris.Add(WantsTls ? uri.WithTls(true) : uri);
            else
            {
                WriteNbdError(ErrorIds.UriInvalid, $"'{text}' is not an NBD URI: {error}", text);
                ok = false;
            }
        }
        return ok;
    }

    private string Resolve(string path) => SessionState.Path.GetUnresolvedProviderPathFromPSPath(path);
}
