using System.Diagnostics;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>Runs a peer tool (nbdinfo, qemu-io, ...) with a time limit. A missing tool is a test failure, not a silent pass.</summary>
internal static class ExternalTool
{
    public sealed record Result(int ExitCode, string StdOut, string StdErr)
    {
        public Result AssertSuccess(string what)
        {
            Assert.True(ExitCode == 0, $"{what} exited {ExitCode}\nstdout:\n{StdOut}\nstderr:\n{StdErr}");
            return this;
        }
    }

    public static string Require(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Append("/usr/sbin").Append("/sbin"))
        {
            var path = Path.Combine(dir, tool);
            if (File.Exists(path))
                return path;
        }
        Assert.Fail($"{tool} is not installed; .ci/run installs it (apt-get install the package that provides {tool}).");
        return tool;
    }

    public static Result Run(string tool, IEnumerable<string> args, TimeSpan? timeout = null, string? stdin = null)
    {
        var psi = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin != null,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin != null)
        {
            p.StandardInput.Write(stdin);
            p.StandardInput.Close();
        }
        if (!p.WaitForExit(timeout ?? TimeSpan.FromSeconds(120)))
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            Assert.Fail($"{tool} {string.Join(' ', args)} did not finish within {(timeout ?? TimeSpan.FromSeconds(120)).TotalSeconds} s");
        }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static Result Run(string tool, params string[] args) => Run(tool, (IEnumerable<string>)args);
}
