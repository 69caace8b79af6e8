using System.Security.Cryptography;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>nbdcopy opens four connections and keeps many requests in flight: multi-conn and concurrency under a real client.</summary>
public class NbdCopyInteropTests
{
    [Theory]
    [InlineData("mem", false)]
    [InlineData("file", true)]
    public async Task Round_trip_through_an_export_preserves_every_byte(string export, bool unix)
    {
        await using var s = InteropServer.Start();
        string source = Path.Combine(s.Server.Directory, "source.raw");
        var data = RandomNumberGenerator.GetBytes(16 << 20);
        File.WriteAllBytes(source, data);
        ExternalTool.Run("nbdcopy", "--flush", source, s.Uri(export, unix)).AssertSuccess("nbdcopy in");
        string back = Path.Combine(s.Server.Directory, "back.raw");
        ExternalTool.Run("nbdcopy", s.Uri(export, unix), back).AssertSuccess("nbdcopy out");
        var copy = File.ReadAllBytes(back);
        Assert.Equal(InteropServer.Size, copy.LongLength);
        Assert.True(data.AsSpan().SequenceEqual(copy.AsSpan(0, data.Length)), "nbdcopy round trip changed data");
        Assert.All(copy.AsSpan(data.Length, 4096).ToArray(), b => Assert.Equal(0, b));
        var stats = s.Server.Server.GetExport(export)!;
        Assert.True(stats.TotalConnections >= 4, $"nbdcopy should use multi-conn; saw {stats.TotalConnections} connections");
        Assert.Equal(16L << 20, stats.Io.BytesWritten);
    }
}
