using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Commands;

/// <summary>
/// Attaches an NBD export as a kernel block device /dev/nbdN: from a server (-ComputerName, -SocketPath) or from an
/// export object (Find-NbdExport, or Start-NbdExport/Get-NbdExport, attached over a socket pair by the process that
/// serves it). A device that must outlive this pwsh (-Persistent, TLS relays, exports of the service) is attached
/// and owned by the NbdPowerShell service. An export that is attached already returns its session unless -NewDevice.
/// </summary>
[Cmdlet(VerbsCommunications.Connect, "NbdDevice", DefaultParameterSetName = ComputerNameSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(NbdSession))]
public sealed class ConnectNbdDeviceCommand : NbdClientCmdlet
{
    private const string ComputerNameSet = "ComputerName";
    private const string SocketPathSet = "SocketPath";
    private const string InputObjectSet = "InputObject";
    private const string UriSet = "Uri";

    /// <summary>
    /// The server. Several hosts that share one -Port and export name are failover servers of one read-only image,
    /// tried in order, like several -Uri.
    /// </summary>
    [Parameter(ParameterSetName = ComputerNameSet, Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Server", "CN")]
    [ValidateNotNullOrEmpty]
    public string[] ComputerName { get; set; } = [];

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

    /// <summary>
    /// NBD URIs of the export (nbd://host:port/export, nbds://..., nbd+unix:///export?socket=path). Several are
    /// failover servers of one read-only image; the NbdPowerShell service supervises such a device.
    /// </summary>
    [Parameter(ParameterSetName = UriSet, Mandatory = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    public string[] Uri { get; set; } = [];

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

    /// <summary>The NbdPowerShell service owns the device and keeps it in its configuration: it is taken back after a service restart and attached again after a reboot.</summary>
    [Parameter]
    public SwitchParameter Persistent { get; set; }

    /// <summary>Attach another device even when this export is attached already (by default its existing session is returned).</summary>
    [Parameter]
    public SwitchParameter NewDevice { get; set; }

    /// <summary>Nbd: the kernel's nbd driver (/dev/nbdN). Fuse: a FUSE file served by the NbdPowerShell service, bound to /dev/loopN. Auto: Nbd where the driver exists, else Fuse with a warning.</summary>
    [Parameter]
    public DeviceDriver Driver { get; set; } = DeviceDriver.Auto;

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

        NbdUri uri;
        List<NbdUri>? servers = null;
        (string Name, HostScope Scope)? local = null;
        switch (ParameterSetName)
        {
            case UriSet:
                if (!TryParseUris(Uri, out servers) || !FailoverIsReadOnly(servers, "-Uri", Uri))
                    return;
                uri = servers[0];
                break;
            case SocketPathSet:
                uri = NbdUri.ForUnix(SessionState.Path.GetUnresolvedProviderPathFromPSPath(SocketPath), ExportName, WantsTls);
                break;
            case InputObjectSet:
                if (!TryResolveInput(InputObject!, out uri!, out local))
                    return;
                if (WantsTls && local is null)
                    uri = uri.WithTls(true);
                break;
            default:
                servers = ComputerName.Select(host => NbdUri.ForTcp(host, Port, ExportName, WantsTls)).ToList();
                if (!FailoverIsReadOnly(servers, "-ComputerName", ComputerName))
                    return;
                uri = servers[0];
                if (servers.Count == 1)
                    servers = null;
                break;
        }
        if (local is { Scope: HostScope.Process } && Persistent)
        {
            WriteNbdError(ErrorIds.InvalidArgument,
                $"Export '{local.Value.Name}' is served by this PowerShell process and ends with it, so a device attached to it cannot be persistent; start the export with -Persistent first.", uri.ToString());
            return;
        }
        string kind;
        try
        {
            kind = DeviceDriverChoice.Choose(Driver, index is not null, out string? fallback);
            if (fallback is not null)
                WriteWarning(fallback);
        }
        catch (Exception e) when (IsExpected(e))
        {
            WriteNbdError(e, uri.ToString());
            return;
        }
        bool fuse = kind == FuseDeviceKind.KindName;
        if (fuse && servers is { Count: > 1 })
        {
            // Failover swaps the kernel's sockets (netlink RECONFIGURE); a FUSE device has none to swap.
            WriteNbdError(ErrorIds.InvalidArgument,
                "Several servers (failover) need the nbd driver, which this machine does not have or -Driver Fuse excluded; give one -Uri or -ComputerName for a FUSE device.", servers.Select(u => u.ToString()).ToArray());
            return;
        }
        if (fuse && local is { Scope: HostScope.Process })
            WriteWarning($"Export '{local.Value.Name}' is served by this PowerShell process: the FUSE device reaches it at {uri} and fails once this process exits or stops the export.");
        // The service owns what must outlive this pwsh: persistent devices (supervised), failover lists, TLS relays,
        // devices of its own exports, and FUSE servers.
        var owner = fuse ? HostScope.Service : local?.Scope ?? (Persistent || uri.Tls || servers is { Count: > 1 } ? HostScope.Service : HostScope.Process);

        if (!NewDevice && FindAttached(uri, index) is { } existing)
        {
            WriteVerbose($"{uri} is attached already as {existing.Device}; nothing changed (use -NewDevice to attach another device).");
            WriteObject(existing with { Changed = false });
            return;
        }

        string by = owner == HostScope.Service ? " (owned by the NbdPowerShell service)" : local is not null ? " (served by this process)" : "";
        string what = servers is { Count: > 1 } ? $"{uri} (failover: {string.Join(", ", servers.Skip(1))})" : uri.ToString();
        string target = $"{what}{by} as {(index is int i ? $"/dev/nbd{i}" : fuse ? "the first free loop device (through FUSE)" : "the first free nbd device")}";
        if (!ShouldProcess(target, Persistent ? "Connect persistent NBD device" : "Connect NBD device"))
            return;

        TryRun(() =>
        {
            var request = new DeviceRequest
            {
                Kind = kind,
                Uris = servers?.Select(u => u.ToString()).ToArray() ?? [uri.ToString()],
                // The FUSE server is a normal NBD client of the export's listener, not of a socket pair.
                LocalExport = fuse ? null : local?.Name,
                Tls = local is null ? BuildTlsSpec() : null,
                ReadOnly = ReadOnly,
                Index = index,
                BlockSize = BlockSize > 0 ? BlockSize : null,
                TimeoutSeconds = Timeout > 0 ? Timeout : null,
                DeadConnectionTimeoutSeconds = MyInvocation.BoundParameters.ContainsKey(nameof(DeadConnectionTimeout)) ? DeadConnectionTimeout : null,
                Connections = Connections,
                Persistent = Persistent,
                NewDevice = NewDevice,
                Options = fuse ? new FuseDeviceRequestOptions { ChooseConnections = !MyInvocation.BoundParameters.ContainsKey(nameof(Connections)) }.ToJson() : null,
            };
            INbdHost host = owner == HostScope.Service ? StartService() : Hosts.Process;
            var result = Wait(host.AttachDeviceAsync(request, CancelToken), "Connect-NbdDevice",
                $"Attaching {uri} as {(index is int n ? $"/dev/nbd{n}" : fuse ? "a loop device through FUSE" : "an nbd device")}");
            var session = AllSessions()?.FirstOrDefault(s => s.Device == result.Value.Device) ?? OutputMapper.ToSession(null, result.Value, Hosts.Process);
            if (!result.Changed)
                WriteVerbose($"{uri} is attached already as {session.Device}; nothing changed (use -NewDevice to attach another device).");
            else if (owner == HostScope.Service)
                WriteVerbose($"{session.Device} is owned by the NbdPowerShell service{(Persistent ? " and kept in its configuration" : "")}: it keeps working after this PowerShell exits ({session.Transport}).");
            else if (session.Scope == "Process")
                WriteVerbose($"{session.Device} depends on this PowerShell process ({session.Transport}); it fails when the process exits or the module is removed.");
            WriteObject(session with { Changed = result.Changed });
        }, uri.ToString());
    }

    /// <summary>A connected device of the same export (server, port or socket, export name), on <paramref name="index"/> when given.</summary>
    /// <summary>
    /// Several servers are failover targets of one read-only image; a writable device must stay on the server that
    /// acknowledged its writes, so several servers without -ReadOnly are refused.
    /// </summary>
    private bool FailoverIsReadOnly(List<NbdUri> servers, string parameter, string[] values)
    {
        if (servers.Count <= 1 || ReadOnly)
            return true;
        WriteNbdError(ErrorIds.InvalidArgument,
            $"Several {parameter} values are failover servers of one read-only image: add -ReadOnly. A writable device reconnects only to the server it was attached to (writes acknowledged by one server are not on another).", values);
        return false;
    }

    private NbdSession? FindAttached(NbdUri uri, int? index) =>
        AllSessions()?.FirstOrDefault(s => s.IsConnected && s.State == "Connected" && (index is null || (s.Index == index && s.Driver == "Nbd"))
            && (Driver == DeviceDriver.Auto || s.Driver == Driver.ToString())
            && NbdUri.TryParse(s.Uri, out var attached) && DeviceRequest.SameExport(attached, uri));

    /// <summary>
    /// An export object to a URI: an NbdExport of this process or of the service is attached by its own host over a
    /// socket pair; anything else (NbdRemoteExport, deserialized objects) by its Uri, or ComputerName/Port/Name.
    /// </summary>
    private bool TryResolveInput(PSObject input, out NbdUri? uri, out (string Name, HostScope Scope)? local)
    {
        local = null;
        uri = null;
        string? name = input.Properties["Name"]?.Value?.ToString();
        string? text = input.Properties["Uri"]?.Value?.ToString();
        string? scope = input.Properties["Scope"]?.Value?.ToString();
        if (name is not null && text is not null && scope is "Process" or "Service")
        {
            bool served = scope == "Process"
                ? Hosts.Process.GetExport(name) is { } live && live.Uri == text
                : QueryService((c, ct) => c.GetExportsAsync(ct))?.Any(e => e.Name == name && e.Uri == text && e.State == "Running") == true;
            if (served && NbdUri.TryParse(text, out uri))
            {
                local = (name, Enum.Parse<HostScope>(scope));
                return true;
            }
        }
        if (text is not null && NbdUri.TryParse(text, out uri))
            return true;
        string? host = input.Properties["ComputerName"]?.Value?.ToString();
        name ??= input.Properties["ExportName"]?.Value?.ToString();
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
