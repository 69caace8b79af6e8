using System.Management.Automation;
using NbdPowerShell.Completers;
using NbdPowerShell.Engine.Protocol;

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
        TryRun(() => WriteObject(ExportHost.Default.Start(request)), name);
        DrainEngineLog();
    }

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
