using System.Text.Json;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>libnbd's nbdinfo is the judge of negotiation: flags, contexts, sizes, listing and extents.</summary>
public class NbdInfoInteropTests
{
    [Theory]
    [InlineData("mem", false)]
    [InlineData("mem", true)]
    [InlineData("file", false)]
    [InlineData("file", true)]
    public async Task Json_reports_size_capabilities_and_contexts(string export, bool unix)
    {
        await using var s = InteropServer.Start();
        var r = ExternalTool.Run("nbdinfo", "--json", s.Uri(export, unix)).AssertSuccess("nbdinfo --json");
        using var doc = JsonDocument.Parse(r.StdOut);
        Assert.Equal("newstyle-fixed", doc.RootElement.GetProperty("protocol").GetString());
        Assert.True(doc.RootElement.GetProperty("structured").GetBoolean());
        var e = doc.RootElement.GetProperty("exports")[0];
        Assert.Equal(InteropServer.Size, e.GetProperty("export-size").GetInt64());
        Assert.Equal(export, e.GetProperty("export-name").GetString());
        foreach (var can in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df", "can_cache" })
            Assert.True(e.GetProperty(can).GetBoolean(), can);
        Assert.False(e.GetProperty("is_read_only").GetBoolean());
        Assert.Contains("base:allocation", e.GetProperty("contexts").EnumerateArray().Select(x => x.GetString()));
        Assert.Equal(67108864, e.GetProperty("block_size_maximum").GetInt64());
    }

    [Fact]
    public async Task Read_only_export_is_reported_read_only()
    {
        await using var server = new TestServer();
        server.Add("ro", new NbdPowerShell.Engine.Storage.MemoryBlockStore(1 << 20), readOnly: true);
        var r = ExternalTool.Run("nbdinfo", "--json", server.Uri("ro", false)).AssertSuccess("nbdinfo");
        using var doc = JsonDocument.Parse(r.StdOut);
        var e = doc.RootElement.GetProperty("exports")[0];
        Assert.True(e.GetProperty("is_read_only").GetBoolean());
        Assert.False(e.GetProperty("can_trim").GetBoolean());
        Assert.False(e.GetProperty("can_zero").GetBoolean());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task List_shows_every_export_with_description(bool unix)
    {
        await using var s = InteropServer.Start();
        var r = ExternalTool.Run("nbdinfo", "--list", "--json", s.Uri("", unix)).AssertSuccess("nbdinfo --list");
        using var doc = JsonDocument.Parse(r.StdOut);
        var exports = doc.RootElement.GetProperty("exports").EnumerateArray()
            .ToDictionary(x => x.GetProperty("export-name").GetString()!, x => x);
        Assert.Equal(new[] { "file", "mem" }, exports.Keys.Order());
        Assert.Equal("sparse image", exports["file"].GetProperty("description").GetString());
        Assert.Equal(InteropServer.Size, exports["mem"].GetProperty("export-size").GetInt64());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Map_shows_holes_of_a_sparse_file(bool unix)
    {
        await using var s = InteropServer.Start();
        var map = Map(s.Uri("file", unix));
        // Data only where it was written; everything else reads as hole+zero.
        Assert.Contains(map, m => m.Offset <= InteropServer.DataOffset && m.End >= InteropServer.DataOffset + InteropServer.DataLength && m.Type == 0);
        Assert.Contains(map, m => m.Offset == 0 && m.Type == 3);
        Assert.Equal(InteropServer.Size, map[^1].End);
        long dataBytes = map.Where(m => m.Type == 0).Sum(m => m.End - m.Offset);
        Assert.True(dataBytes < 8L << 20, $"{dataBytes} bytes reported as data in a file with 2 MiB of data");
    }

    [Fact]
    public async Task Map_shows_the_memory_backend_as_holes_until_written()
    {
        await using var s = InteropServer.Start();
        var before = Map(s.Uri("mem", false));
        Assert.Single(before);
        Assert.Equal(3, before[0].Type);
        ExternalTool.Run("qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 64k", s.Uri("mem", false)).AssertSuccess("qemu-io write");
        var after = Map(s.Uri("mem", false));
        Assert.Contains(after, m => m.Type == 0 && m.Offset <= 1 << 20 && m.End >= (1 << 20) + 65536);
        Assert.Contains(after, m => m.Type == 3 && m.Offset == 0);
    }

    internal sealed record MapEntry(long Offset, long End, int Type);

    internal static List<MapEntry> Map(string uri)
    {
        var r = ExternalTool.Run("nbdinfo", "--map", "--json", uri).AssertSuccess("nbdinfo --map");
        using var doc = JsonDocument.Parse(r.StdOut);
        return doc.RootElement.EnumerateArray().Select(x =>
        {
            long offset = x.GetProperty("offset").GetInt64();
            return new MapEntry(offset, offset + x.GetProperty("length").GetInt64(), x.GetProperty("type").GetInt32());
        }).ToList();
    }
}
