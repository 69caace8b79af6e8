using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The NbdPowerShell service process: one per machine (a lock in the runtime directory), serving the persistent
/// exports and owning the devices that must outlive the shell. It runs inside pwsh (started on demand or by the
/// systemd unit Install-NbdService writes) as <c>[NbdPowerShell.Engine.Service.NbdService]::Run(...)</c>, or in the
/// bench host for tests. On SIGTERM (or SIGINT, or Stop-NbdService) it refuses new work, drains in-flight requests,
/// flushes file backends and exits 0 within the configured grace time.
/// </summary>
public static class NbdService
{
    public const int ExitStopped = 0;
    public const int ExitFailed = 1;
    /// <summary>The stop took longer than the grace time (what could be flushed was).</summary>
    public const int ExitStopTimedOut = 2;
    /// <summary>Another service holds the lock; the caller waits for that one instead.</summary>
    public const int ExitAlreadyRunning = 3;

    /// <summary>Runs the service on the locations the environment names (NBDPOWERSHELL_RUNTIME_DIR, NBDPOWERSHELL_CONFIG_DIR) until it is stopped.</summary>
    public static int Run() => Run(ServicePaths.FromEnvironment());

    /// <summary>Runs the service on these locations until it is stopped; returns the process exit code.</summary>
    public static int Run(string runtimeDirectory, string configDirectory) => Run(new ServicePaths(runtimeDirectory, configDirectory));

    public static int Run(ServicePaths paths)
    {
        using var loggers = new StderrLog();
        var log = loggers.CreateLogger(LogCategories.Service);
        try
        {
            if (!OperatingSystem.IsLinux())
            {
                log.LogCritical("The NbdPowerShell service runs on Linux only.");
                return ExitFailed;
            }
            var runtime = ServiceRuntime.StartAsync(paths, loggers, CancellationToken.None).GetAwaiter().GetResult();
            if (runtime is null)
                return ExitAlreadyRunning;
            var service = runtime.Service;
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; service.RequestStop("SIGTERM"); });
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, ctx => { ctx.Cancel = true; service.RequestStop("SIGINT"); });
            using var hangUp = PosixSignalRegistration.Create(PosixSignal.SIGHUP, ctx => { ctx.Cancel = true; log.LogInformation("SIGHUP ignored: the service has no terminal and reloads nothing"); });
            string reason = service.StopRequested.GetAwaiter().GetResult();
            return runtime.StopAsync(reason).GetAwaiter().GetResult() ? ExitStopped : ExitStopTimedOut;
        }
        catch (Exception e)
        {
            log.LogCritical(e, "The service failed");
            return ExitFailed;
        }
    }
}

/// <summary>
/// One running service: the lock, the configuration, the host with its restored exports and devices, and the control
/// socket. <see cref="NbdService.Run(ServicePaths)"/> runs one per process; tests run one in-process.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal sealed class ServiceRuntime
{
    private readonly FileStream _lock;
    private readonly ControlServer _control;
    private readonly ILogger _log;

    private ServiceRuntime(FileStream lockFile, ServiceHost service, ControlServer control, ILogger log)
    {
        _lock = lockFile;
        Service = service;
        _control = control;
        _log = log;
    }

    public ServiceHost Service { get; }

    /// <summary>Takes the lock, restores the configuration and opens the control socket; null when another service holds the lock.</summary>
    /// <param name="addKinds">Registers more device kinds before devices are taken back (tests).</param>
    public static async Task<ServiceRuntime?> StartAsync(ServicePaths paths, ILoggerFactory loggers, CancellationToken cancellationToken,
        TimeSpan? controlIdleTimeout = null, Action<Hosting.Devices.DeviceRegistry>? addKinds = null)
    {
        var log = loggers.CreateLogger(LogCategories.Service);
        Directory.CreateDirectory(paths.RuntimeDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
            | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        FileStream lockFile;
        try
        {
            // .NET takes an flock for FileShare.None; the kernel drops it when this process dies, even by SIGKILL.
            lockFile = new FileStream(paths.LockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            log.LogWarning("Another NbdPowerShell service holds {Lock}; this one exits", paths.LockFile);
            return null;
        }
        try
        {
            var store = new ConfigurationStore(paths.ConfigurationFile, log);
            var configuration = store.Load();
            int grace = configuration.ShutdownGraceSeconds;
            // Connection drains and the final wait for stuck requests each get part of the grace time, leaving room for the flush.
            var serverOptions = new NbdServerOptions { StopGracePeriod = TimeSpan.FromSeconds(Math.Max(1, (grace - 7) / 2.0)) };
            var host = new NbdHost(HostScope.Service, loggers, serverOptions);
            // FUSE devices are the service's only: their FUSE server must outlive the pwsh that asked for them.
            var fuse = new Fuse.FuseDeviceKind(paths.RuntimeDirectory, loggers.CreateLogger(LogCategories.Devices));
            host.Devices.AddKind(fuse);
            addKinds?.Invoke(host.Devices);
            var service = new ServiceHost(host, store, paths, grace, log);
            log.LogInformation("NbdPowerShell service {Version} (pid {Pid}) starting: configuration {Config}, control socket {Socket}",
                ServiceHost.ModuleVersion, Environment.ProcessId, paths.ConfigurationFile, paths.ControlSocket);
            // Before devices come back: what a crashed earlier service left of its FUSE devices (mounts, loop devices).
            service.CleanedUp = await CleanUpFuseAsync(fuse, log, cancellationToken).ConfigureAwait(false);
            var problems = await service.RestoreAsync(configuration, cancellationToken).ConfigureAwait(false);
            var control = new ControlServer(paths.ControlSocket, service, loggers.CreateLogger(LogCategories.Control)) { IdleTimeout = controlIdleTimeout ?? ControlServer.DefaultIdleTimeout };
            control.Start();
            SystemdNotify.Ready();
            log.LogInformation("Ready: {Exports} export(s), {Devices} device(s), {Problems} problem(s)", host.Count, host.Devices.GetStatus().Count, problems.Count);
            return new ServiceRuntime(lockFile, service, control, log);
        }
        catch
        {
            await lockFile.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Cleans up what dead owners left of FUSE devices; returns one line per attachment cleaned (also logged). Never fatal.</summary>
    private static async Task<IReadOnlyList<string>> CleanUpFuseAsync(Fuse.FuseDeviceKind fuse, ILogger log, CancellationToken cancellationToken)
    {
        try
        {
            var report = await fuse.CleanUpAsync(cancellationToken).ConfigureAwait(false);
            var lines = report.Cleaned.Select(c =>
                $"FUSE device {(c.LoopDevices.Count > 0 ? string.Join(", ", c.LoopDevices) : c.Id)} of {c.Uri ?? "an unknown export"}, left by a process that ended: {string.Join("; ", c.Actions)}{(c.IsComplete ? "" : " (not complete: it goes once released)")}").ToArray();
            foreach (string line in lines)
                log.LogWarning("Cleaned up {What}", line);
            return lines;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NbdKernelException)
        {
            log.LogWarning("Cleaning up FUSE devices of an earlier run failed: {Message}", e.Message);
            return [$"cleaning up FUSE devices of an earlier run failed: {e.Message}"];
        }
    }

    /// <summary>
    /// The graceful stop: refuse new work, close the control socket, drain in-flight requests, flush and close file
    /// backends, let go of devices, release the lock. False when it did not finish within the grace time.
    /// </summary>
    public async Task<bool> StopAsync(string reason)
    {
        Service.RequestStop(reason);
        SystemdNotify.Stopping();
        int grace = Service.ShutdownGraceSeconds;
        _log.LogInformation("Stopping ({Reason}): refusing new work, draining in-flight requests, flushing file backends (grace {Grace} s)", reason, grace);
        var stopping = Task.Run(async () =>
        {
            await _control.DisposeAsync().ConfigureAwait(false);
            foreach (var warning in Service.Host.Shutdown(ListDevices, TimeSpan.FromSeconds(grace)))
                _log.LogWarning("{Warning}", warning);
        });
        bool inTime = await Task.WhenAny(stopping, Task.Delay(TimeSpan.FromSeconds(grace))).ConfigureAwait(false) == stopping;
        if (inTime)
        {
            await stopping.ConfigureAwait(false);
            _log.LogInformation("Stopped");
        }
        else
        {
            _log.LogError("The stop did not finish within {Grace} s; exiting anyway", grace);
        }
        await _lock.DisposeAsync().ConfigureAwait(false);
        return inTime;
    }

    private static IReadOnlyList<(int, string, string?, bool)> ListDevices()
    {
        try
        {
            return NbdDeviceDiscovery.System().GetDevices().Select(d => (d.Index, d.Device, d.BackendIdentifier, d.IsConnected)).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NbdKernelException)
        {
            return [];
        }
    }
}
