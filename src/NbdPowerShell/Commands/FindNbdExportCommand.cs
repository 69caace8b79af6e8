using System.Management.Automation;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Commands;

/// <summary>Lists a server's exports with size, description and flags (like nbd-client -l and nbdinfo --list).</summary>
[Cmdlet(VerbsCommon.Find, "NbdExport", DefaultParameterSetName = ComputerNameSet)]
[OutputType(typeof(NbdRemoteExport))]
public sealed class FindNbdExportCommand : NbdClientCmdlet
{
    private const string ComputerNameSet = "ComputerName";
    private const string SocketPathSet = "SocketPath";
    private const string UriSet = "Uri";

    [Parameter(ParameterSetName = ComputerNameSet, Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Server", "CN")]
    [ValidateNotNullOrEmpty]
    public string ComputerName { get; set; } = "";

    [Parameter(ParameterSetName = ComputerNameSet, Position = 1, ValueFromPipelineByPropertyName = true)]
    [ValidateRange(1, 65535)]
    public int Port { get; set; } = NbdLimits.DefaultPort;

    [Parameter(ParameterSetName = SocketPathSet, Mandatory = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    public string SocketPath { get; set; } = "";

    /// <summary>NBD URIs of servers (nbd://host:port/export, nbds://..., nbd+unix:///export?socket=path); with an export name only that export is listed.</summary>
    [Parameter(ParameterSetName = UriSet, Mandatory = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    public string[] Uri { get; set; } = [];

    /// <summary>Seconds to connect and list before failing with NbdTimeout.</summary>
    [Parameter]
    [ValidateRange(1, 3600)]
    public int Timeout { get; set; } = 30;

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        if (ParameterSetName == UriSet)
        {
            if (!TryParseUris(Uri, out var uris))
                return;
            foreach (var uri in uris)
                List(uri, uri.ExportName.Length > 0 ? uri.ExportName : null);
            return;
        }
        List(ParameterSetName == SocketPathSet
            ? NbdUri.ForUnix(SessionState.Path.GetUnresolvedProviderPathFromPSPath(SocketPath), tls: WantsTls)
            : NbdUri.ForTcp(ComputerName, Port, tls: WantsTls), null);
    }

    /// <summary>Lists the exports of <paramref name="server"/>; only <paramref name="exportName"/> when given (NbdExportNameUnknown when it has none of that name).</summary>
    private void List(NbdUri server, string? exportName)
    {
        TryRun(() =>
        {
            var options = NbdClientOptions.Default with { Timeout = TimeSpan.FromSeconds(Timeout), Tls = BuildTlsSpec()?.Load() };
            var exports = Wait(NbdClient.ListExportsAsync(server, options, CancelToken), "Find-NbdExport", $"Listing the exports of {Describe(server)}");
            if (exportName is not null)
            {
                exports = exports.Where(e => e.Name == exportName).ToList();
                if (exports.Count == 0)
                {
                    WriteNbdError(ErrorIds.ExportNameUnknown, $"{Describe(server)} has no export named '{exportName}'.", server.ToString());
                    return;
                }
            }
            foreach (var e in exports)
                WriteObject(OutputMapper.ToRemote(server, e));
        }, Describe(server));
    }

    private static string Describe(NbdUri server) => server.IsUnix ? server.SocketPath! : $"{server.Host}:{server.Port}";
}
