using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>fio's nbd engine (libnbd) with checksummed random writes verified by reading back.</summary>
public class FioInteropTests
{
    [Theory]
    [InlineData("mem", false)]
    [InlineData("file", true)]
    public async Task Random_writes_verify_with_crc32c(string export, bool unix)
    {
        await using var s = InteropServer.Start();
        var r = ExternalTool.Run("fio", new[]
        {
            "--name=verify", "--ioengine=nbd", $"--uri={s.Uri(export, unix)}", "--rw=randwrite", "--bs=4k",
            "--iodepth=16", "--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
            "--output-format=terse", "--terse-version=3",
        }, TimeSpan.FromMinutes(3)).AssertSuccess("fio");
        // Terse v3: field 5 is total errors (after version;fio;jobname;groupid).
        var fields = r.StdOut.Trim().Split('\n').Last().Split(';');
        Assert.Equal("0", fields[4]);
        Assert.DoesNotContain("verify", r.StdErr, StringComparison.OrdinalIgnoreCase);
        var stats = s.Server.Server.GetExport(export)!;
        Assert.Equal(16L << 20, stats.Io.BytesWritten);
        Assert.True(stats.Io.BytesRead >= 16L << 20, "fio should have read everything back to verify it");
        Assert.Equal(0, stats.Io.Errors);
    }
}
