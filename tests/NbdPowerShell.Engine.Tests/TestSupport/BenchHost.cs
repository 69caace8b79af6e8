using System.Diagnostics;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// The bench console host (bench/NbdPowerShell.Bench) running "serve" in a child process, for
/// tests that must kill the serving process outright.
/// </summary>
internal sealed class BenchHost : IDisposable
{
    private Process _process;
    private readonly string[] _args;

    private BenchHost(Process process, int port, string[] args)
    {
        _process = process;
        Port = port;
        _args = args;
    }

    public int Port { get; }
    public int ProcessId => _process.Id;

    /// <summary>Path of the built bench host, next to this test assembly's configuration.</summary>
    public static string Locate()
    {
        // .../tests/NbdPowerShell.Engine.Tests/bin/<Configuration>/<tfm>/
        var baseDir = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/'));
        string tfm = baseDir.Name;
        string configuration = baseDir.Parent!.Name;
        var dir = baseDir;
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "NbdPowerShell.sln")))
            dir = dir.Parent;
        Assert.True(dir != null, $"cannot find the repository root above {AppContext.BaseDirectory}");
        string dll = Path.Combine(dir!.FullName, "bench", "NbdPowerShell.Bench", "bin", configuration, tfm, "NbdPowerShell.Bench.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing; build the solution (the test project references the bench project so it is built first).");
        return dll;
    }

    /// <summary>Starts "serve --port 0 ARGS" and waits for its "READY port" line.</summary>
    public static BenchHost Start(params string[] args)
    {
        var (process, ready) = Launch(["serve", "--port", "0", .. args]);
        return new BenchHost(process, int.Parse(ready.AsSpan(6)), args);
    }

    /// <summary>Process start of the newest <see cref="Restart"/> and the moment it accepted TCP connections again.</summary>
    public (DateTime Started, DateTime Accepting)? LastRestart { get; private set; }

    /// <summary>Kills the server and starts it again on the same port with the same arguments.</summary>
    public void Restart()
    {
        if (!_process.HasExited) Kill();
        _process.Dispose();
        var started = DateTime.UtcNow;
        DateTime? accepting = null;
        (_process, _) = Launch(["serve", "--port", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), .. _args],
            p => accepting = WaitUntilAccepting(Port, p));
        LastRestart = (started, accepting ?? DateTime.UtcNow);
    }

    /// <summary>Runs the bench host with <paramref name="args"/> and waits for its first line, which must start with "READY ".</summary>
    public static (Process Process, string ReadyLine) Launch(params string[] args) => Launch(args, null);

    /// <summary>As above; <paramref name="started"/> runs after the process started, before its READY line is awaited.</summary>
    private static (Process Process, string ReadyLine) Launch(string[] args, Action<Process>? started)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(Locate());
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var line = process.StandardOutput.ReadLineAsync();
        started?.Invoke(process);
        // .NET under emulation (the kernel-test VM) starts 20-30x slower.
        var limit = TimeSpan.FromSeconds(Environment.GetEnvironmentVariable("NBD_VM") == "1" ? 180 : 60);
        if (!line.Wait(limit) || line.Result is not { } ready || !ready.StartsWith("READY ", StringComparison.Ordinal))
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            process.WaitForExit(5000);
            Assert.Fail($"the bench host ({string.Join(' ', args)}) did not report READY; stderr:\n{(stderr.IsCompleted ? stderr.Result : "")}");
        }
        return (process, line.Result!);
    }

    /// <summary>
    /// Polls the port until a connection succeeds: under emulation the READY line can reach this (busy) process
    /// seconds after the server listens, which would make restart timings look better than they are.
    /// </summary>
    private static DateTime? WaitUntilAccepting(int port, Process process)
    {
        var clock = Stopwatch.StartNew();
        while (!process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(300))
        {
            using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            try
            {
                probe.Connect(System.Net.IPAddress.Loopback, port);
                return DateTime.UtcNow;
            }
            catch (System.Net.Sockets.SocketException) { Thread.Sleep(20); }
        }
        return null;
    }

    /// <summary>SIGKILL: no managed code of the server runs after this, no flush, no close.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: true);
        Assert.True(_process.WaitForExit(10_000), "the killed server process did not exit");
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            _process.WaitForExit(10_000);
        }
        _process.Dispose();
    }
}
