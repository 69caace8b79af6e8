using System.Diagnostics;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// The bench console host (bench/NbdPowerShell.Bench) running "serve" in a child process, for
/// tests that must kill the serving process outright.
/// </summary>
internal sealed class BenchHost : IDisposable
{
    private readonly Process _process;

    private BenchHost(Process process, int port)
    {
        _process = process;
        Port = port;
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
        return new BenchHost(process, int.Parse(ready.AsSpan(6)));
    }

    /// <summary>Runs the bench host with <paramref name="args"/> and waits for its first line, which must start with "READY ".</summary>
    public static (Process Process, string ReadyLine) Launch(params string[] args)
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
        if (!line.Wait(TimeSpan.FromSeconds(60)) || line.Result is not { } ready || !ready.StartsWith("READY ", StringComparison.Ordinal))
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            process.WaitForExit(5000);
            Assert.Fail($"the bench host ({string.Join(' ', args)}) did not report READY; stderr:\n{(stderr.IsCompleted ? stderr.Result : "")}");
        }
        return (process, line.Result!);
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
