using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Commands;

/// <summary>
/// Attaches an NBD export as a kernel block device /dev/nbdN: from a server (-ComputerName, -SocketPath) or
/// from an export object (Find-NbdExport, or Start-NbdExport/Get-NbdExport, which attach in-process without TCP).
/// </summary>
[Cmdlet(VerbsCommunications.Connect, "NbdDevice", DefaultParameterSetName = ComputerNameSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(NbdSession))]
public sealed class ConnectNbdDeviceCommand : NbdClientCmdlet
{
    private const string ComputerNameSet = "ComputerName";
    private const string SocketPathSet = "SocketPath";
    private const string InputObjectSet = "InputObject";

    [Parameter(ParameterSetName = ComputerNameSet, Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Server", "CN")]
    [ValidateNotNullOrEmpty]
    public string ComputerName { get; set; } = "";

    [Parameter(ParameterSetName = ComputerNameSet, ValueFromPipelineByPropertyName = true)]
    [ValidateRange(1, 65535)]
    public int Port { get; set; } = NbdLimits.DefaultPort;

    [Parameter(ParameterSetName = ComputerNameSet, Position = 1, ValueFromPipelineByPropertyName = true)]
    [Parameter(ParameterSetName = SocketPathSet, Position = 1, ValueFromPipelineByPropertyName = true)]
    [Alias("Name")]
    [ArgumentCompleter(typeof(RemoteExportNameCompleter))]
    [AllowEmptyString]
    public string ExportName { get; set; } = "";

    [Parameter(ParameterSetName = SocketPathSet, Mandatory = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    public string SocketPath { get; set; } = "";

    /// <summary>An NbdExport (attached in-process through a socket pair) or an NbdRemoteExport.</summary>
    [Parameter(ParameterSetName = InputObjectSet, Mandatory = true, ValueFromPipeline = true)]
    [ValidateNotNull]
    public PSObject? InputObject { get; set; }

    /// <summary>/dev/nbdN to use; omitted, the kernel picks a free one.</summary>
    [Parameter]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    [ValidateNotNullOrEmpty]
    public string? Device { get; set; }

    [Parameter]
    public SwitchParameter ReadOnly { get; set; }

    [Parameter]
    [ValidateSet("512", "1024", "2048", "4096")]
    public int BlockSize { get; set; }

    /// <summary>Seconds: limit for connecting and negotiating, and the kernel's request timeout.</summary>
    [Parameter]
    [ValidateRange(1, 86400)]
    public int Timeout { get; set; }

    /// <summary>Seconds the kernel waits for a dead connection to be replaced before failing I/O.</summary>
    [Parameter]
    [ValidateRange(0, 86400)]
    public int DeadConnectionTimeout { get; set; }

    [Parameter]
    [ValidateRange(1, 16)]
    public int Connections { get; set; } = 1;

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        DrainEngineLog();
        int? index = null;
        if (Device is not null)
        {
            index = Selection.ParseDevice(Device);
            if (index is null)
            {
                WriteNbdError(ErrorIds.InvalidArgument, $"-Device '{Device}' is not an nbd device; use /dev/nbdN (Get-NbdDevice lists them).", Device);
                return;
            }
        }

        string? localExport = null;
        NbdUri uri;
        switch (ParameterSetName)
        {
            case SocketPathSet:
                uri = NbdUri.ForUnix(SessionState.Path.GetUnresolvedProviderPathFromPSPath(SocketPath), ExportName, WantsTls);
                break;
            case InputObjectSet:
                if (!TryResolveInput(InputObject!, out uri!, out localExport))
                    return;
                if (WantsTls) uri = uri.WithTls(true);
                break;
            default:
                uri = NbdUri.ForTcp(ComputerName, Port, ExportName, WantsTls);
                break;
        }

        string target = $"{uri}{(localExport is null ? "" : " (served by this process)")} as {(index is int i ? $"/dev/nbd{i}" : "the first free nbd device")}";
        if (!ShouldProcess(target, "Connect NBD device"))
            return;

        TimeSpan? timeout = Timeout > 0 ? TimeSpan.FromSeconds(Timeout) : null;
        var attachOptions = new AttachOptions
        {
            Index = index,
            BlockSize = BlockSize > 0 ? BlockSize : null,
            Timeout = timeout,
            DeadConnectionTimeout = MyInvocation.BoundParameters.ContainsKey(nameof(DeadConnectionTimeout)) ? TimeSpan.FromSeconds(DeadConnectionTimeout) : null,
            ReadOnly = ReadOnly,
        };

        TryRun(() =>
        {
            // A local export is reached over a socketpair inside this process: no TLS to negotiate.
            var clientOptions = NbdClientOptions.Default with { Timeout = timeout ?? NbdClientOptions.Default.Timeout, Tls = localExport is null ? BuildTlsOptions() : null };
            var connections = Wait(NegotiateAsync(uri, localExport, clientOptions), "Connect-NbdDevice", $"Connecting to {uri}");
            AttachResult result;
            try
            {
                result = Wait(new KernelAttacher(EngineLog.Default).AttachAsync(connections, localExport is null ? attachOptions : attachOptions with { BackendIdentifier = uri.ToString() }, CancelToken),
                    "Connect-NbdDevice", $"Setting up {(index is int n ? $"/dev/nbd{n}" : "an nbd device")} for {uri}");
            }
            finally
            {
                // Connections the attach took over are detached already; the rest (on failure) close here,
                // so a local export's connection slots are free for a retry.
                foreach (var c in connections)
                    c.Dispose();
            }
            if (localExport is not null)
                Hosts.Process.RecordLocalDevice(localExport, result.Index);
            if (result.IsTlsRelayed)
                WriteVerbose($"{result.Device} reaches {connections[0].Uri} over TLS through a relay in this PowerShell process; it lives until Disconnect-NbdDevice or until the module is removed.");
            WriteObject(OutputMapper.FromAttach(result, uri, timeout, localExport is not null));
        }, uri.ToString());
    }

    private async Task<IReadOnlyList<NbdNegotiatedConnection>> NegotiateAsync(NbdUri uri, string? localExport, NbdClientOptions options)
    {
        var connections = new List<NbdNegotiatedConnection>();
        try
        {
            for (int i = 0; i < Connections; i++)
            {
                if (localExport is not null)
                {
                    var (socket, _) = await Hosts.Process.OpenLocalConnectionAsync(localExport, CancelToken).ConfigureAwait(false);
                    connections.Add(await NbdClient.NegotiateAsync(socket, uri.WithTls(false), options, CancelToken).ConfigureAwait(false));
                }
                else
                {
                    connections.Add(await NbdClient.ConnectAsync(uri, options, CancelToken).ConfigureAwait(false));
                }
            }
            return connections;
        }
        catch
        {
            foreach (var c in connections)
                c.Dispose();
            throw;
        }
    }

    /// <summary>
    /// An export object to a URI: an NbdExport this process serves is attached in-process; anything else
    /// (NbdRemoteExport, deserialized objects from jobs or remoting) by its Uri, or ComputerName/Port/Name.
    /// </summary>
    private bool TryResolveInput(PSObject input, out NbdUri? uri, out string? localExport)
    {
        localExport = null;
        uri = null;
        if (input.BaseObject is NbdExport export && Hosts.Process.GetExport(export.Name) is { } live && live.Uri == export.Uri)
        {
            localExport = live.Name;
            uri = NbdUri.Parse(live.Uri);
            return true;
        }
        string? text = input.Properties["Uri"]?.Value?.ToString();
        if (text is not null && NbdUri.TryParse(text, out uri))
            return true;
        string? host = input.Properties["ComputerName"]?.Value?.ToString();
        string? name = input.Properties["Name"]?.Value?.ToString() ?? input.Properties["ExportName"]?.Value?.ToString();
        if (!string.IsNullOrEmpty(host) && int.TryParse(input.Properties["Port"]?.Value?.ToString(), out int port) && port is > 0 and < 65536)
        {
            uri = NbdUri.ForTcp(host, port, name ?? "");
            return true;
        }
        WriteNbdError(ErrorIds.InvalidArgument,
            $"Cannot connect to '{input}': pipe an NbdExport or NbdRemoteExport (Get-NbdExport, Find-NbdExport), or use -ComputerName/-SocketPath.", input);
        return false;
    }
}
