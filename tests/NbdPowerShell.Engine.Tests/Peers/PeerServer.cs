using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Client;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Peers;

/// <summary>
/// A peer NBD server (nbdkit, qemu-nbd, nbd-server) started for one test and killed in Dispose.
/// A missing binary fails the test with a clear message instead of passing silently.
/// Children are forked from one long-lived thread (<see cref="Launcher"/>): a parent-death signal
/// (nbdkit --exit-with-parent, and children seen getting SIGTERM when the forking pool thread exited)
/// follows the *thread* that forked, and thread-pool threads come and go.
/// </summary>
public sealed class PeerServer : IDisposable
{
    private Process _process;
    private readonly List<string> _cleanup = new();
    private string? _daemonPidFile;
    private string _binary = "";
    private string[] _args = [];

    public NbdUri Uri { get; }
    public int Port => Uri.Port;
    public string Name { get; }
    public int ProcessId => _process.Id;

    /// <summary>Process start of the newest <see cref="Restart"/> and the moment it accepted connections again.</summary>
    public (DateTime Started, DateTime Accepting)? LastRestart { get; private set; }

    private PeerServer(Process process, NbdUri uri, string name, IEnumerable<string> cleanup)
    {
        _process = process;
        Uri = uri;
        Name = name;
        _cleanup.AddRange(cleanup);
    }

    public static string RequireBinary(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Concat(["/usr/sbin", "/sbin"]))
        {
            var path = Path.Combine(dir, name);
            if (File.Exists(path)) return path;
        }
        Assert.Fail($"Peer binary '{name}' is not installed; install it (apt-get install nbdkit nbd-server nbd-client qemu-utils libnbd-bin) to run this test.");
        return "";
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public static string TempPath(string suffix) => Path.Combine(Path.GetTempPath(), $"nbdps-{Guid.NewGuid():N}{suffix}");

    /// <summary>nbdkit in the foreground over TCP, e.g. Nbdkit("memory", "64M").</summary>
    public static PeerServer Nbdkit(params string[] pluginArgs) => NbdkitOn("127.0.0.1", pluginArgs);

    public static PeerServer NbdkitOn(string address, params string[] pluginArgs)
    {
        int port = FreePort();
        var uri = NbdUri.ForTcp(address, port);
        return Start("nbdkit", ["-v", "-f", "-p", port.ToString(), "-i", address, .. pluginArgs], uri, []);
    }

    /// <summary>nbdkit's file plugin on loopback TCP without -v (its per-request logging slows reads under emulation).</summary>
    public static PeerServer NbdkitFile(string image, bool readOnly)
    {
        int port = FreePort();
        string[] args = readOnly ? ["-f", "-p", port.ToString(), "-i", "127.0.0.1", "-r", "file", image] : ["-f", "-p", port.ToString(), "-i", "127.0.0.1", "file", image];
        return Start("nbdkit", args, NbdUri.ForTcp("127.0.0.1", port), []);
    }

    public static PeerServer NbdkitUnix(params string[] pluginArgs) => NbdkitUnixAt(TempPath(".sock"), pluginArgs);

    /// <summary>nbdkit on the Unix socket <paramref name="sock"/> (again at the same path, for restart tests).</summary>
    public static PeerServer NbdkitUnixAt(string sock, params string[] pluginArgs) =>
        Start("nbdkit", ["--exit-with-parent", "-f", "--unix", sock, .. pluginArgs], NbdUri.ForUnix(sock), [sock]);

    /// <summary>qemu-nbd serving a fresh sparse raw image of <paramref name="size"/> bytes under <paramref name="exportName"/>.</summary>
    public static PeerServer QemuNbd(string exportName, long size, int shared = 1)
    {
        string image = TempPath(".img");
        using (var f = File.Create(image)) f.SetLength(size);
        int port = FreePort();
        return Start("qemu-nbd", ["-f", "raw", "-x", exportName, "-p", port.ToString(), "-b", "127.0.0.1", "-t", "-e", shared.ToString(), image],
            NbdUri.ForTcp("127.0.0.1", port, exportName), [image]);
    }

    /// <summary>qemu-nbd serving an existing raw <paramref name="image"/> (left in place) under <paramref name="exportName"/>.</summary>
    public static PeerServer QemuNbdImage(string exportName, string image, bool readOnly = false)
    {
        int port = FreePort();
        string[] ro = readOnly ? ["-r"] : [];
        return Start("qemu-nbd", ["-f", "raw", "-x", exportName, "-p", port.ToString(), "-b", "127.0.0.1", "-t", .. ro, image],
            NbdUri.ForTcp("127.0.0.1", port, exportName), []);
    }

    /// <summary>nbd-server (foreground) with two named exports backed by files of the given sizes.</summary>
    public static PeerServer NbdServer(params (string Name, long Size)[] exports)
    {
        int port = FreePort();
        var files = new List<string>();
        var conf = new System.Text.StringBuilder();
        conf.AppendLine("[generic]").AppendLine($"port = {port}").AppendLine("listenaddr = 127.0.0.1").AppendLine("allowlist = true")
            .AppendLine("user = root").AppendLine("group = root");
        foreach (var (name, size) in exports)
        {
            string file = TempPath(".img");
            using (var f = File.Create(file)) f.SetLength(size);
            files.Add(file);
            conf.AppendLine($"[{name}]").AppendLine($"exportname = {file}");
        }
        string confPath = TempPath(".conf");
        File.WriteAllText(confPath, conf.ToString());
        string pidFile = TempPath(".pid");
        files.Add(confPath);
        files.Add(pidFile);
        // -d (no fork) exits when any client aborts, so run it as a daemon and kill it through its pid file.
        return Start("nbd-server", ["-C", confPath, "-p", pidFile], NbdUri.ForTcp("127.0.0.1", port), files, pidFile);
    }

    /// <summary>nbd-server (daemon) serving an existing file as export <paramref name="name"/>; the file is not deleted at the end.</summary>
    public static PeerServer NbdServerFile(string name, string path, bool readOnly)
    {
        int port = FreePort();
        var conf = new System.Text.StringBuilder();
        conf.AppendLine("[generic]").AppendLine($"port = {port}").AppendLine("listenaddr = 127.0.0.1").AppendLine("allowlist = true")
            .AppendLine("user = root").AppendLine("group = root");
        conf.AppendLine($"[{name}]").AppendLine($"exportname = {path}").AppendLine($"readonly = {(readOnly ? "true" : "false")}");
        string confPath = TempPath(".conf");
        File.WriteAllText(confPath, conf.ToString());
        string pidFile = TempPath(".pid");
        return Start("nbd-server", ["-C", confPath, "-p", pidFile], NbdUri.ForTcp("127.0.0.1", port, name), [confPath, pidFile], pidFile);
    }

    private static PeerServer Start(string binary, string[] args, NbdUri uri, IEnumerable<string> cleanup, string? daemonPidFile = null)
    {
        var psi = new ProcessStartInfo(RequireBinary(binary)) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var (process, stderr) = Launch(psi, binary);
        var server = new PeerServer(process, uri, binary, cleanup) { _daemonPidFile = daemonPidFile, _binary = binary, _args = args };
        try { server.WaitUntilAccepting(stderr); }
        catch
        {
            server.Dispose();
            throw;
        }
        return server;
    }

    private static (Process Process, System.Text.StringBuilder Stderr) Launch(ProcessStartInfo psi, string binary)
    {
        var process = Launcher.Start(psi);
        var stderr = new System.Text.StringBuilder();
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) { stderr.AppendLine(e.Data); if (Environment.GetEnvironmentVariable("NBDPS_PEER_LOG") is { } log) File.AppendAllText(log, $"{binary}[{process.Id}]: {e.Data}\n"); } };
        process.OutputDataReceived += (_, _) => { };
        // How a peer ended (exit code or signal) belongs beside its stderr when a restart test finds its port closed.
        process.EnableRaisingEvents = true;
        process.Exited += (_, _) =>
        {
            if (Environment.GetEnvironmentVariable("NBDPS_PEER_LOG") is { } log)
                lock (stderr) File.AppendAllText(log, $"{binary}[{process.Id}]: exited with {process.ExitCode} at {DateTime.UtcNow:HH:mm:ss.fff}\n");
        };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return (process, stderr);
    }

    private void WaitUntilAccepting(System.Text.StringBuilder stderr)
    {
        // Slow machines (the test VM) need a generous bound.
        var clock = Stopwatch.StartNew();
        while (!Accepts())
        {
            if (_process.HasExited && (_daemonPidFile is null || _process.ExitCode != 0))
                Assert.Fail($"{_binary} {string.Join(' ', _args)} exited with {_process.ExitCode}: {stderr}");
            if (clock.Elapsed > TimeSpan.FromSeconds(60))
                Assert.Fail($"{_binary} did not start listening within 60 s: {stderr}");
            Thread.Sleep(20);
        }
    }

    /// <summary>
    /// Starts the server again with the same arguments (same port, same files) after <see cref="Kill"/>, and waits
    /// until it accepts connections.
    /// </summary>
    public void Restart()
    {
        Kill();
        _process.Dispose();
        if (_daemonPidFile is not null) File.Delete(_daemonPidFile);
        var psi = new ProcessStartInfo(RequireBinary(_binary)) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in _args) psi.ArgumentList.Add(a);
        var started = DateTime.UtcNow;
        (_process, var stderr) = Launch(psi, _binary);
        WaitUntilAccepting(stderr);
        LastRestart = (started, DateTime.UtcNow);
    }

    private bool Accepts()
    {
        try
        {
            if (Uri.IsUnix)
            {
                if (!File.Exists(Uri.SocketPath)) return false;
                using var u = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                u.Connect(new UnixDomainSocketEndPoint(Uri.SocketPath!));
                return true;
            }
            using var s = new Socket(SocketType.Stream, ProtocolType.Tcp);
            s.Connect(IPAddress.Parse(Uri.Host), Uri.Port);
            return true;
        }
        catch (SocketException) { return false; }
    }

    /// <summary>Starts processes from one thread that lives as long as the test process.</summary>
    private static class Launcher
    {
        private static readonly System.Collections.Concurrent.BlockingCollection<(ProcessStartInfo Psi, TaskCompletionSource<Process> Done)> Queue = new();

        static Launcher()
        {
            new Thread(() =>
            {
                foreach (var (psi, done) in Queue.GetConsumingEnumerable())
                {
                    try { done.SetResult(Process.Start(psi)!); }
                    catch (Exception e) { done.SetException(e); }
                }
            }) { IsBackground = true, Name = "peer launcher" }.Start();
        }

        public static Process Start(ProcessStartInfo psi)
        {
            var done = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
            Queue.Add((psi, done));
            return done.Task.GetAwaiter().GetResult();
        }
    }

    /// <summary>Kills the server now (for tests of a dead server under an attached device).</summary>
    public void Kill()
    {
        if (_daemonPidFile is not null && File.Exists(_daemonPidFile) && int.TryParse(File.ReadAllText(_daemonPidFile).Trim(), out int pid))
        {
            try { using var daemon = Process.GetProcessById(pid); daemon.Kill(entireProcessTree: true); daemon.WaitForExit(10_000); }
            catch (ArgumentException) { }
            catch (InvalidOperationException) { }
        }
        try { if (!_process.HasExited) { _process.Kill(); _process.WaitForExit(10_000); } }
        catch (InvalidOperationException) { }
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
        foreach (var f in _cleanup) { try { File.Delete(f); } catch (IOException) { } }
    }
}
