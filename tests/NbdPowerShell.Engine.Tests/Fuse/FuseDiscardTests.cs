using System.Security.Cryptography;
using System.Text.Json;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using static NbdPowerShell.Engine.Tests.Kernel.KernelTestTools;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>
/// Discard and zero-out on the loop device arrive as fallocate on our FUSE file and leave the server as
/// WRITE_ZEROES: the range must read back as zeroes on every server (also where TRIM is a no-op), and a server
/// that can deallocate does so.
/// </summary>
[Collection("Fuse")]
public sealed class FuseDiscardTests
{
    private const int MiB = 1 << 20;

    [FuseFact]
    public async Task Blkdiscard_punches_a_hole_on_the_server()
    {
        using var nbdkit = PeerServer.Nbdkit("memory", "64M");
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, client: Options);
        Assert.True(attachment.Device!.DiscardMaxBytes > 0, "the loop device should take discards");
        var data = RandomNumberGenerator.GetBytes(16 * MiB);
        FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
        Assert.Contains(Map(nbdkit), e => e.Offset <= 4 * MiB && e.End >= 12 * MiB && !e.IsHole);

        RunOk("blkdiscard", "-o", (4 * MiB).ToString(), "-l", (8 * MiB).ToString(), attachment.LoopDevice);

        var map = Map(nbdkit);
        Assert.True(map.Where(e => e.IsHole).Any(e => e.Offset <= 4 * MiB && e.End >= 12 * MiB),
            "nbdinfo --map shows no hole over the discarded range:\n" + string.Join("\n", map));
        Assert.All(map.Where(e => e.Offset < 4 * MiB), e => Assert.False(e.IsHole, $"{e} was never discarded"));
        var back = FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length);
        Assert.Equal(data.AsSpan(0, 4 * MiB).ToArray(), back.AsSpan(0, 4 * MiB).ToArray());
        Assert.True(back.AsSpan(4 * MiB, 8 * MiB).IndexOfAnyExcept((byte)0) < 0, "the discarded range must read as zeroes");
        Assert.Equal(data.AsSpan(12 * MiB).ToArray(), back.AsSpan(12 * MiB).ToArray());
        Assert.True(attachment.Statistics.Zeroes > 0);
        await attachment.DetachAsync();
    }

    /// <summary>qemu-nbd ignores TRIM by default (--discard=ignore): a discard mapped to TRIM would leave the old data.</summary>
    [FuseFact]
    public async Task Discarded_range_reads_as_zeroes_where_the_server_ignores_trim()
    {
        using var qemu = PeerServer.QemuNbd("disk", 32L * MiB, shared: 4);
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(qemu.Uri, client: Options);
        var data = RandomNumberGenerator.GetBytes(8 * MiB);
        FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
        RunOk("blkdiscard", "-o", (2 * MiB).ToString(), "-l", (4 * MiB).ToString(), attachment.LoopDevice);
        RunOk("blkdiscard", "-z", "-o", (6 * MiB).ToString(), "-l", (1 * MiB).ToString(), attachment.LoopDevice);
        var back = FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length);
        Assert.True(back.AsSpan(2 * MiB, 5 * MiB).IndexOfAnyExcept((byte)0) < 0, "discarded and zeroed ranges must read as zeroes");
        Assert.Equal(data.AsSpan(0, 2 * MiB).ToArray(), back.AsSpan(0, 2 * MiB).ToArray());
        Assert.Equal(data.AsSpan(7 * MiB).ToArray(), back.AsSpan(7 * MiB).ToArray());
        await attachment.DetachAsync();
    }

    /// <summary>
    /// Without WRITE_ZEROES on the server, fallocate answers EOPNOTSUPP: the loop driver then stops taking discards
    /// (a discard is a hint: blkdiscard changes nothing, and the kernel may report success) and the block layer
    /// zeroes by writing (blkdiscard -z still zeroes).
    /// </summary>
    [FuseFact]
    public async Task Server_without_write_zeroes_refuses_discard_and_still_zeroes()
    {
        using var nbdkit = PeerServer.Nbdkit("--filter=nozero", "memory", "32M", "zeromode=none");
        await using var scope = new FuseTestScope();
        var attachment = await scope.Attacher.AttachAsync(nbdkit.Uri, client: Options);
        var data = RandomNumberGenerator.GetBytes(4 * MiB);
        FuseTestScope.WriteDevice(attachment.LoopDevice, 0, data);
        Run("blkdiscard", "-o", "0", "-l", MiB.ToString(), attachment.LoopDevice);
        Assert.Equal(data, FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length));
        Assert.Equal(0, attachment.Device!.DiscardMaxBytes); // the loop driver turned discard off
        RunOk("blkdiscard", "-z", "-o", "0", "-l", MiB.ToString(), attachment.LoopDevice);
        var back = FuseTestScope.ReadDevice(attachment.LoopDevice, 0, data.Length);
        Assert.True(back.AsSpan(0, MiB).IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal(data.AsSpan(MiB).ToArray(), back.AsSpan(MiB).ToArray());
        await attachment.DetachAsync();
    }

    private sealed record MapEntry(long Offset, long Length, bool IsHole)
    {
        public long End => Offset + Length;
    }

    /// <summary>The server's allocation map as nbdinfo --map --json reports it (base:allocation).</summary>
    private static List<MapEntry> Map(PeerServer server)
    {
        string output = ExternalTool.Run("nbdinfo", "--map", "--json", server.Uri.ToString()).AssertSuccess("nbdinfo --map").StdOut;
        using var json = JsonDocument.Parse(output);
        return json.RootElement.EnumerateArray()
            .Select(e => new MapEntry(e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), (e.GetProperty("type").GetInt32() & 1) != 0))
            .ToList();
    }
}
