using System.Management.Automation;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Commands;

/// <summary>Lists a server's exports with size, description and flags (like nbd-client -l and nbdinfo --list).</summary>
[Cmdlet(VerbsCommon.Find, "NbdExport", DefaultParameterSetName = ComputerNameSet)]
[OutputType(typeof(NbdRemoteExport))]
public sealed class FindNbdExportCommand : NbdClientCmdlet
{
    private const string ComputerNameSet = "ComputerName";
    private const string SocketPathSet = "SocketPath";

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

    /// <summary>Seconds to connect and list before failing with NbdTimeout.</summary>
    [Parameter]
    [ValidateRange(1, 3600)]
    public int Timeout { get; set; } = 30;

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        NbdUri server = ParameterSetName == SocketPathSet
            ? NbdUri.ForUnix(SessionState.Path.GetUnresolvedProviderPathFromPSPath(SocketPath), tls: WantsTls)
            : NbdUri.ForTcp(ComputerName, Port, tls: WantsTls);
        TryRun(() =>
        {
            var options = NbdClientOptions.Default with { Timeout = TimeSpan.FromSeconds(Timeout), Tls = BuildTlsSpec()?.Load() };
            var exports = Wait(NbdClient.ListExportsAsync(server, options, CancelToken), "Find-NbdExport", $"Listing the exports of {Describe(server)}");
            foreach (var e in exports)
                WriteObject(OutputMapper.ToRemote(server, e));
        }, Describe(server));
    }

    private static string Describe(NbdUri server) => server.IsUnix ? server.SocketPath! : $"{server.Host}:{server.Port}";
}
