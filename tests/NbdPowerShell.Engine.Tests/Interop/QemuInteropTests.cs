using System.Security.Cryptography;
using System.Text.Json;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>qemu's NBD client (qemu-io, qemu-img) as the judge of data, flush, discard, zeroes and block status.</summary>
public class QemuInteropTests
{
    [Theory]
    [InlineData("mem", false)]
    [InlineData("mem", true)]
    [InlineData("file", false)]
    [InlineData("file", true)]
    public async Task Qemu_io_pattern_write_read_flush_discard_and_write_zeroes(string export, bool unix)
    {
        await using var s = InteropServer.Start();
        var r = ExternalTool.Run("qemu-io", "-f", "raw",
            "-c", "write -P 0xab 0 1M",
            "-c", "read -P 0xab 0 1M",
            "-c", "flush",
            "-c", "discard 0 64k",
            "-c", "write -z 64k 64k",
            "-c", "read -P 0 0 128k",
            "-c", "read -P 0xab 128k 896k",
            "-c", "write -P 0xcd -f 2M 4k", // FUA
            "-c", "read -P 0xcd 2M 4k",
            s.Uri(export, unix)).AssertSuccess("qemu-io");
        // qemu-io prints "Pattern verification failed" but still exits 0 on some versions.
        Assert.DoesNotContain("verification failed", r.StdOut + r.StdErr, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("read 917504/917504 bytes at offset 131072", r.StdOut);
        if (export == "file")
        {
            // The writes went to the file itself.
            using var f = File.OpenRead(s.ImagePath);
            var buf = new byte[4096];
            f.Position = 2 << 20;
            f.ReadExactly(buf);
            Assert.All(buf, b => Assert.Equal(0xcd, b));
        }
    }

    [Theory]
    [InlineData("mem", false)]
    [InlineData("file", true)]
    public async Task Qemu_img_convert_in_and_out_then_compare(string export, bool unix)
    {
        await using var s = InteropServer.Start();
        string source = Path.Combine(s.Server.Directory, "source.raw");
        File.WriteAllBytes(source, RandomNumberGenerator.GetBytes((int)InteropServer.Size));
        ExternalTool.Run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, s.Uri(export, unix)).AssertSuccess("qemu-img convert in");
        string back = Path.Combine(s.Server.Directory, "back.raw");
        ExternalTool.Run("qemu-img", "convert", "-f", "raw", "-O", "raw", s.Uri(export, unix), back).AssertSuccess("qemu-img convert out");
        var original = File.ReadAllBytes(source);
        var copy = File.ReadAllBytes(back);
        Assert.Equal(InteropServer.Size, copy.LongLength);
        Assert.True(original.AsSpan().SequenceEqual(copy.AsSpan(0, original.Length)), "data read back differs from data written");
        // qemu-img compare reads both through their own drivers; exit 0 means identical (size difference is only a warning).
        ExternalTool.Run("qemu-img", "compare", "-f", "raw", "-F", "raw", source, s.Uri(export, unix)).AssertSuccess("qemu-img compare");
    }

    [Fact]
    public async Task Qemu_img_info_and_map_see_size_and_allocation()
    {
        await using var s = InteropServer.Start();
        var info = ExternalTool.Run("qemu-img", "info", "--output=json", s.Uri("file", false)).AssertSuccess("qemu-img info");
        using (var doc = JsonDocument.Parse(info.StdOut))
            Assert.Equal(InteropServer.Size, doc.RootElement.GetProperty("virtual-size").GetInt64());
        var map = ExternalTool.Run("qemu-img", "map", "--output=json", "-f", "raw", s.Uri("file", false)).AssertSuccess("qemu-img map");
        using var m = JsonDocument.Parse(map.StdOut);
        var data = m.RootElement.EnumerateArray().Where(e => e.GetProperty("data").GetBoolean()).ToList();
        Assert.NotEmpty(data);
        Assert.All(data, e =>
        {
            long start = e.GetProperty("start").GetInt64();
            long end = start + e.GetProperty("length").GetInt64();
            Assert.True(start <= InteropServer.DataOffset + InteropServer.DataLength && end >= InteropServer.DataOffset,
                $"data extent {start}-{end} lies outside the written range");
        });
    }
}
