namespace NbdPowerShell.Engine.Service.Messages;

/// <summary>The service family: readiness, status, stop.</summary>
public static class ServiceMessages
{
    /// <summary>Answered as soon as the service is ready (exports and devices restored); on-demand starts wait for it.</summary>
    public const string Hello = "service.hello";
    public const string Status = "service.status";
    /// <summary>A graceful stop, as SIGTERM does.</summary>
    public const string Stop = "service.stop";

    internal static void Register(ControlDispatcher dispatcher, ServiceHost service)
    {
        dispatcher.Add<NoBody, HelloReply>(Hello, changes: false, (_, _) => Task.FromResult(new HelloReply(ControlProtocol.Version, ServiceHost.ModuleVersion, Environment.ProcessId)));
        dispatcher.Add<NoBody, ServiceStatus>(Status, changes: false, (_, _) => Task.FromResult(service.GetStatus()));
        dispatcher.Add<NoBody, NoBody>(Stop, changes: false, (_, _) =>
        {
            service.RequestStop("a Stop-NbdService request");
            return Task.FromResult(NoBody.Value);
        });
    }
}

public sealed record HelloReply(int Protocol, string Version, int ProcessId);

/// <summary>What Get-NbdService shows of a running service.</summary>
public sealed record ServiceStatus
{
    public int ProcessId { get; init; }
    public string Version { get; init; } = "";
    public DateTimeOffset StartTime { get; init; }
    public string ControlSocket { get; init; } = "";
    public string ConfigurationPath { get; init; } = "";
    public string RuntimeDirectory { get; init; } = "";
    /// <summary>Where stdout and stderr go when started on demand; under systemd they go to the journal.</summary>
    public string LogPath { get; init; } = "";
    public int ExportCount { get; init; }
    public int DeviceCount { get; init; }
    public int ShutdownGraceSeconds { get; init; }
    /// <summary>Started by systemd (the unit Install-NbdService writes), not on demand.</summary>
    public bool IsSystemdManaged { get; init; }
    public bool IsStopping { get; init; }
    /// <summary>Configuration entries that were skipped and exports or devices that could not come back.</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];
    /// <summary>What the service cleaned up when it started: FUSE mounts and loop devices a crashed earlier service left.</summary>
    public IReadOnlyList<string> CleanedUp { get; init; } = [];
}
