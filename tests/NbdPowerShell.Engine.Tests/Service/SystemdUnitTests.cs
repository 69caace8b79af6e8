using System.Diagnostics;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Tests.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Service;

/// <summary>The unit Install-NbdService writes: systemd's own checker accepts it, also for awkward paths.</summary>
public sealed class SystemdUnitTests : IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public void Dispose() => _scratch.Dispose();

    [Fact]
    public void Words_are_quoted_and_escaped_the_way_systemd_reads_them()
    {
        Assert.Equal("/usr/bin/pwsh", SystemdUnit.Escape("/usr/bin/pwsh"));
        Assert.Equal("\"Import-Module 'x'; exit 0\"", SystemdUnit.Escape("Import-Module 'x'; exit 0"));
        Assert.Equal("\"a \\\"b\\\" 100%% $$HOME\"", SystemdUnit.Escape("a \"b\" 100% $HOME"));
        Assert.Equal("\"back\\\\slash\"", SystemdUnit.Escape("back\\slash"));
    }

    [Fact]
    public void The_unit_passes_systemd_analyze_verify_even_with_spaces_and_percent_signs_in_its_paths()
    {
        if (!File.Exists("/usr/bin/systemd-analyze"))
        {
            Assert.Fail("systemd-analyze is missing: install the systemd package (it is only used to verify the unit, never started)");
        }
        string odd = Path.Combine(_scratch.Path, "odd dir 100%");
        var paths = new ServicePaths(Path.Combine(odd, "run"), Path.Combine(odd, "etc"));
        // The service command as the launcher builds it, with a module path that needs quoting.
        var command = new[] { "/usr/bin/env", "pwsh", "-NoProfile", "-NonInteractive", "-Command",
            $"Import-Module '{Path.Combine(odd, "NbdPowerShell.psd1")}'; exit [NbdPowerShell.Engine.Service.NbdService]::Run('{paths.RuntimeDirectory}', '{paths.ConfigDirectory}')" };
        string text = SystemdUnit.Render(command, paths, shutdownGraceSeconds: 20);
        Assert.Contains("Type=notify", text);
        Assert.Contains("TimeoutStopSec=35", text);
        Assert.Contains("KillSignal=SIGTERM", text);
        string unit = Path.Combine(_scratch.Path, SystemdUnit.UnitName);
        SystemdUnit.Write(unit, text);
        var start = new ProcessStartInfo("/usr/bin/systemd-analyze") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add("verify");
        start.ArgumentList.Add(unit);
        using var verify = Process.Start(start)!;
        string output = verify.StandardOutput.ReadToEnd() + verify.StandardError.ReadToEnd();
        Assert.True(verify.WaitForExit(60_000));
        Assert.True(verify.ExitCode == 0, output);
        Assert.DoesNotContain(SystemdUnit.UnitName, output);
    }
}
