using System.Security.Cryptography;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>A copy-on-write export over a golden image: clients see their writes, the image never changes.</summary>
public class CopyOnWriteInteropTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Writes_through_the_overlay_never_touch_the_base_file(bool fileOverlay)
    {
        await using var server = new TestServer();
        string golden = Path.Combine(server.Directory, "golden.img");
        File.WriteAllBytes(golden, RandomNumberGenerator.GetBytes(16 << 20));
        string before = InteropServer.Sha256(golden);

        var baseStore = FileBlockStore.Open(golden, readOnly: true);
        IBlockStore cow = fileOverlay
            ? CopyOnWriteBlockStore.WithTemporaryFileOverlay(baseStore, server.Directory, ownsBase: true)
            : CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, ownsBase: true);
        server.Add("clone", cow);
        string uri = server.Uri("clone", unix: false);

        var r = ExternalTool.Run("qemu-io", "-f", "raw",
            "-c", "write -P 0x5a 100 5000",       // partial blocks: copy-up of surrounding base bytes
            "-c", "write -P 0x6b 4M 1M",
            "-c", "discard 8M 1M",
            "-c", "write -z 12M 64k",
            "-c", "flush",
            "-c", "read -P 0x5a 100 5000",
            "-c", "read -P 0x6b 4M 1M",
            "-c", "read -P 0 12M 64k",
            uri).AssertSuccess("qemu-io on the clone");
        Assert.DoesNotContain("verification failed", r.StdOut + r.StdErr, StringComparison.OrdinalIgnoreCase);

        // Bytes around the partial write still come from the golden image.
        string copy = Path.Combine(server.Directory, "clone.raw");
        ExternalTool.Run("nbdcopy", uri, copy).AssertSuccess("nbdcopy out of the clone");
        var goldenBytes = File.ReadAllBytes(golden);
        var cloneBytes = File.ReadAllBytes(copy);
        Assert.True(goldenBytes.AsSpan(0, 100).SequenceEqual(cloneBytes.AsSpan(0, 100)));
        Assert.True(goldenBytes.AsSpan(5100, 1000).SequenceEqual(cloneBytes.AsSpan(5100, 1000)));
        Assert.True(goldenBytes.AsSpan(14 << 20, 1 << 20).SequenceEqual(cloneBytes.AsSpan(14 << 20, 1 << 20)));

        await server.Server.RemoveExportAsync("clone", force: true);
        Assert.Equal(before, InteropServer.Sha256(golden));
        // The temporary overlay file is gone with the export.
        Assert.DoesNotContain(Directory.GetFiles(server.Directory), f => !f.EndsWith(".img") && !f.EndsWith(".raw") && !f.EndsWith(".sock"));
    }
}
