using System.Diagnostics;
using System.Text;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The systemd unit that runs the service at boot (Install-NbdService): Type=notify (the service says READY=1 once
/// its control socket answers), SIGTERM to stop with a timeout above the service's grace time, restart on failure.
/// </summary>
public static class SystemdUnit
{
    public const string UnitName = "nbdpowershell.service";
    public const string DefaultPath = "/etc/systemd/system/" + UnitName;

    /// <summary>True when systemd is the init system of this machine (containers and CI runners often have none).</summary>
    public static bool IsSystemdRunning => Directory.Exists("/run/systemd/system");

    /// <summary>The unit text for running the service of the module at <paramref name="moduleManifest"/> on <paramref name="paths"/>.</summary>
    public static string Render(string moduleManifest, ServicePaths paths, int shutdownGraceSeconds) =>
        Render(ServiceLauncher.ServiceCommand(moduleManifest, paths), paths, shutdownGraceSeconds);

    /// <summary>The unit text for running <paramref name="command"/> (the service command line) on <paramref name="paths"/>.</summary>
    public static string Render(IReadOnlyList<string> command, ServicePaths paths, int shutdownGraceSeconds)
    {
        var text = new StringBuilder();
        text.Append("# Written by Install-NbdService (NbdPowerShell ").Append(ServiceHost.ModuleVersion).Append("); Uninstall-NbdService removes it.\n");
        text.Append("[Unit]\n");
        text.Append("Description=NbdPowerShell service: persistent NBD exports and devices\n");
        text.Append("Documentation=man:nbd-client(8)\n");
        text.Append("Wants=network-online.target\n");
        text.Append("After=network-online.target\n\n");
        text.Append("[Service]\n");
        text.Append("Type=notify\n");
        text.Append("NotifyAccess=main\n");
        text.Append("Environment=").Append(Escape($"{ServicePaths.RuntimeVariable}={paths.RuntimeDirectory}", execLine: false)).Append('\n');
        text.Append("Environment=").Append(Escape($"{ServicePaths.ConfigVariable}={paths.ConfigDirectory}", execLine: false)).Append('\n');
        text.Append("ExecStart=").Append(string.Join(' ', command.Select(w => Escape(w)))).Append('\n');
        text.Append("KillSignal=SIGTERM\n");
        text.Append("KillMode=mixed\n");
        // The service exits within its grace time; systemd waits a little longer before SIGKILL.
        text.Append("TimeoutStopSec=").Append(shutdownGraceSeconds + 15).Append('\n');
        text.Append("TimeoutStartSec=300\n");
        text.Append("Restart=on-failure\n");
        text.Append("RestartSec=2\n\n");
        text.Append("[Install]\n");
        text.Append("WantedBy=multi-user.target\n");
        return text.ToString();
    }

    /// <summary>
    /// One ExecStart word or Environment assignment in systemd's syntax: double-quoted when it has spaces or quotes,
    /// with backslash escapes and '%' (specifiers) doubled; on an exec line '$' (variable expansion) is doubled too.
    /// </summary>
    internal static string Escape(string word, bool execLine = true)
    {
        var escaped = word.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal)
            .Replace("%", "%%", StringComparison.Ordinal);
        if (execLine)
            escaped = escaped.Replace("$", "$$", StringComparison.Ordinal);
        return word.Any(c => char.IsWhiteSpace(c) || c is '"' or '\'' or ';' or '\\') ? $"\"{escaped}\"" : escaped;
    }

    /// <summary>Writes the unit file atomically.</summary>
    public static void Write(string path, string text) => ConfigurationStore.WriteAtomically(path, text, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);

    /// <summary>Runs systemctl with <paramref name="arguments"/>; throws with its output when it fails.</summary>
    public static string Systemctl(params string[] arguments)
    {
        var start = new ProcessStartInfo("systemctl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
            start.ArgumentList.Add(argument);
        using var process = Process.Start(start) ?? throw new NbdHostException(ErrorIds.ServiceUnavailable, "systemctl could not be started.");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill();
            throw new NbdHostException(ErrorIds.Timeout, $"systemctl {string.Join(' ', arguments)} did not finish within 120 s.");
        }
        if (process.ExitCode != 0)
            throw new NbdHostException(ErrorIds.ServiceUnavailable, $"systemctl {string.Join(' ', arguments)} failed (exit code {process.ExitCode}): {error.Result.Trim()}");
        return output.Result;
    }
}
