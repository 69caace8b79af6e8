using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>Debian's nbd-client: listing exports (attaching needs the kernel and is covered by the kernel tests).</summary>
public class NbdClientInteropTests
{
    [Fact]
    public async Task Nbd_client_lists_the_exports()
    {
        await using var s = InteropServer.Start();
        var r = ExternalTool.Run("nbd-client", "-l", "127.0.0.1", s.Server.Port.ToString()).AssertSuccess("nbd-client -l");
        var names = r.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(l => !l.StartsWith("Negotiation", StringComparison.Ordinal)).ToArray();
        // nbd-client prints "name: description" for each export.
        Assert.Equal(new[] { "file: sparse image", "mem: scratch memory" }, names.Order());
    }
}
