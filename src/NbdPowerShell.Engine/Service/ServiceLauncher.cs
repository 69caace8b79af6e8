using System.Diagnostics;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// Starts the service on demand, detached from the caller: in its own session (setsid, so closing the terminal
/// sends it no SIGHUP), stdin from /dev/null, stdout and stderr appended to the log file in the runtime directory.
/// It runs in the same pwsh as the caller (pwsh bundles its .NET; a system dotnet may not exist) and is ready when
/// its control socket answers.
/// </summary>
public static class ServiceLauncher
{
    /// <summary>
    /// The pwsh to run the service in: this process's own pwsh binary, or, for pwsh installed as a .NET tool (where the
    /// process is dotnet running pwsh.dll), dotnet with that pwsh.dll — never the tool's shim, which forks and would
    /// leave the real service behind a process nobody can stop. Outside pwsh (a test host), the pwsh on PATH.
    /// </summary>
    public static string[] PwshCommand()
    {
        string? process = Environment.ProcessPath;
        string name = Path.GetFileNameWithoutExtension(process ?? "");
        if (process is not null && name == "dotnet")
        {
            string first = Environment.GetCommandLineArgs()[0];
            if (Path.GetFileName(first).Equals("pwsh.dll", StringComparison.OrdinalIgnoreCase) && File.Exists(first))
                return [process, Path.GetFullPath(first)];
        }
        if (process is not null && name == "pwsh")
            return [process];
        string? onPath = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "pwsh")).FirstOrDefault(File.Exists);
        return onPath is not null
            ? [onPath]
            : throw new NbdHostException(ErrorIds.ServiceUnavailable, "Cannot find pwsh to run the NbdPowerShell service in; install PowerShell 7.4 or later, or put pwsh on PATH.");
    }

    /// <summary>The whole command line of the service: pwsh, importing the module at <paramref name="moduleManifest"/>, running the service on <paramref name="paths"/>.</summary>
    public static string[] ServiceCommand(string moduleManifest, ServicePaths paths) =>
    [
        .. PwshCommand(),
        "-NoProfile", "-NonInteractive", "-Command",
        // The module resolves the engine's dependencies from its folder; the engine itself is loaded only when first used, so load it by path.
        $"Import-Module {Quote(moduleManifest)}; Add-Type -Path {Quote(Path.Combine(Path.GetDirectoryName(moduleManifest)!, "NbdPowerShell.Engine.dll"))}; " +
        $"exit [NbdPowerShell.Engine.Service.NbdService]::Run({Quote(paths.RuntimeDirectory)}, {Quote(paths.ConfigDirectory)})",
    ];

    /// <summary>A PowerShell single-quoted string.</summary>
    private static string Quote(string text) => "'" + text.Replace("'", "''", StringComparison.Ordinal) + "'";

    /// <summary>
    /// Starts the service and waits until its control socket answers (an already running one counts). Returns the
    /// pid of the service that answered. Throws ServiceUnavailable with the tail of the log when it does not come up.
    /// </summary>
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public static async Task<int> StartAsync(string moduleManifest, ServicePaths paths, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var client = new ServiceClient(paths);
        if (await TryHelloAsync(client, cancellationToken).ConfigureAwait(false) is int running)
            return running;
        if (!File.Exists("/usr/bin/setsid") && !File.Exists("/bin/setsid"))
            throw new NbdHostException(ErrorIds.ServiceUnavailable, "Cannot start the NbdPowerShell service detached: setsid (util-linux) is missing.");
        Directory.CreateDirectory(paths.RuntimeDirectory);
        if (!File.Exists(paths.LogFile))
            File.Create(paths.LogFile, 0, FileOptions.None).Dispose();
        File.SetUnixFileMode(paths.LogFile, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        long logStart = new FileInfo(paths.LogFile).Length;

        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        // exec keeps one process: sh becomes setsid, which (not being a group leader) becomes the service itself.
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("exec setsid \"$@\" </dev/null >>\"$NBDPOWERSHELL_SERVICE_LOG\" 2>&1");
        start.ArgumentList.Add("nbdpowershell-service");
        foreach (var argument in ServiceCommand(moduleManifest, paths))
            start.ArgumentList.Add(argument);
        start.Environment["NBDPOWERSHELL_SERVICE_LOG"] = paths.LogFile;
        start.Environment[ServicePaths.RuntimeVariable] = paths.RuntimeDirectory;
        start.Environment[ServicePaths.ConfigVariable] = paths.ConfigDirectory;
        using var process = Process.Start(start) ?? throw new NbdHostException(ErrorIds.ServiceUnavailable, "Starting the NbdPowerShell service failed.");

        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
            if (await TryHelloAsync(client, cancellationToken).ConfigureAwait(false) is int pid)
                return pid;
            // Exit code 3: another service took the lock first (a concurrent start); wait for that one.
            if (process.HasExited && process.ExitCode != NbdService.ExitAlreadyRunning)
                throw new NbdHostException(ErrorIds.ServiceUnavailable,
                    $"The NbdPowerShell service exited at once (code {process.ExitCode}). Its log {paths.LogFile} says:\n{Tail(paths.LogFile, logStart)}");
        }
        throw new NbdHostException(ErrorIds.ServiceUnavailable,
            $"The NbdPowerShell service (pid {process.Id}) did not answer on {paths.ControlSocket} within {timeout.TotalSeconds:0} s. Its log {paths.LogFile} says:\n{Tail(paths.LogFile, logStart)}");
    }

    private static async Task<int?> TryHelloAsync(ServiceClient client, CancellationToken cancellationToken)
    {
        if (!client.SocketExists)
            return null;
        try
        {
            return (await client.HelloAsync(cancellationToken).ConfigureAwait(false)).ProcessId;
        }
        catch (Exception e) when (e is NbdServiceNotRunningException or NbdHostException { ErrorId: ErrorIds.ServiceUnavailable })
        {
            return null;
        }
    }

    /// <summary>What the service wrote since <paramref name="from"/> (its last 40 lines).</summary>
    private static string Tail(string path, long from)
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            stream.Seek(Math.Min(from, stream.Length), SeekOrigin.Begin);
            var lines = new StreamReader(stream).ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
            return lines.Length == 0 ? "(nothing)" : string.Join("\n", lines.TakeLast(40));
        }
        catch (IOException e)
        {
            return $"(unreadable: {e.Message})";
        }
    }
}
