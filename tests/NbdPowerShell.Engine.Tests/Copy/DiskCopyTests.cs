using System.Diagnostics;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Copy;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Copy;

/// <summary>
/// Copies and hashes between the real peers (nbdkit, qemu-nbd, our server), files and a loop device. Every copy
/// is checked byte for byte (cmp, or a hash of an nbdcopy of the destination), sparseness with du and nbdinfo --map.
/// </summary>
public sealed class DiskCopyTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);
    private const long Size = 64L << 20;

    private readonly string _dir = Directory.CreateTempSubdirectory("nbdps-copy-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string PathOf(string name) => Path.Combine(_dir, name);

    /// <summary>A sparse image: 4 MiB runs of random data at a few places, scattered 4 KiB blocks, the rest holes.</summary>
    private string SparseImage(string name, long size = Size)
    {
        string path = PathOf(name);
        using var f = new FileStream(path, FileMode.CreateNew);
        f.SetLength(size);
        foreach (long at in new[] { 0L, 20L << 20, size - (4L << 20) })
        {
            f.Position = at;
            f.Write(RandomNumberGenerator.GetBytes(4 << 20));
        }
        for (int i = 0; i < 32; i++)
        {
            f.Position = (8L << 20) + i * 300_000L / 4096 * 4096;
            f.Write(RandomNumberGenerator.GetBytes(4096));
        }
        return path;
    }

    private static string Sha256(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();

    private static long Allocated(string path) =>
        long.Parse(ExternalTool.Run("du", "--block-size=1", path).AssertSuccess("du").StdOut.Split('\t')[0]);

    private static void AssertSameFiles(string a, string b) => ExternalTool.Run("cmp", a, b).AssertSuccess($"cmp {a} {b}");

    /// <summary>What a peer tool reads from an export, as a file (the reference to compare our copies with).</summary>
    private string NbdcopyOut(string uri, string name)
    {
        string path = PathOf(name);
        ExternalTool.Run("nbdcopy", uri, path).AssertSuccess("nbdcopy");
        return path;
    }

    private static async Task<DiskCopyResult> CopyAsync(string source, string destination, DiskCopyOptions? options = null, DiskProgress? progress = null, CancellationToken ct = default)
    {
        await using var copy = await DiskCopy.PrepareAsync(DiskLocation.Parse(source), DiskLocation.Parse(destination), options ?? DiskCopyOptions.Default, ct);
        return await copy.RunAsync(progress ?? new DiskProgress(), ct).WaitAsync(Limit);
    }

    /// <summary>Lines of nbdinfo --map: (offset, length, type description).</summary>
    private static List<(long Offset, long Length, string Type)> Map(string uri) =>
        ExternalTool.Run("nbdinfo", "--map", uri).AssertSuccess("nbdinfo --map").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split((char[]?)null, 4, StringSplitOptions.RemoveEmptyEntries))
            .Select(p => (long.Parse(p[0]), long.Parse(p[1]), p[3]))
            .ToList();

    [Fact]
    public async Task Nbdkit_sparse_random_to_a_new_file_is_identical_and_stays_sparse()
    {
        using var server = PeerServer.Nbdkit("sparse-random", "256M", "seed=7", "percent=5", "runlength=1048576");
        string reference = NbdcopyOut(server.Uri.ToString(), "reference.img");
        string target = PathOf("copy.img");
        var r = await CopyAsync(server.Uri.ToString(), target);
        AssertSameFiles(reference, target);
        Assert.True(r.DestinationCreated);
        Assert.Equal(256L << 20, r.Size);
        Assert.Equal(4, r.SourceConnections);
        Assert.True(r.BytesRead < r.Size / 4, $"read {r.BytesRead} of {r.Size}: holes were read");
        Assert.Equal(r.Size - r.BytesWritten, r.BytesSkipped);
        Assert.True(Allocated(target) < r.Size / 4, $"the copy allocates {Allocated(target)} bytes");
    }

    [Fact]
    public async Task Our_export_and_qemu_nbd_to_files()
    {
        string image = SparseImage("source.img");
        await using (var ours = new TestServer())
        {
            ours.Add("disk", FileBlockStore.Open(image, readOnly: true));
            string target = PathOf("from-ours.img");
            var r = await CopyAsync(ours.Uri("disk", unix: false), target);
            AssertSameFiles(image, target);
            Assert.True(r.BytesRead <= Allocated(image), "holes were read");
            Assert.True(Allocated(target) <= Allocated(image) + (1 << 20));
        }
        using (var qemu = PeerServer.QemuNbdImage("disk", image, readOnly: true))
        {
            string target = PathOf("from-qemu.img");
            var r = await CopyAsync(qemu.Uri.ToString(), target, DiskCopyOptions.Default with { Connections = 4 });
            Assert.Equal(1, r.SourceConnections); // qemu-nbd -e 1 does not allow multi-conn
            AssertSameFiles(image, target);
            Assert.True(Allocated(target) <= Allocated(image) + (1 << 20));
        }
    }

    [Fact]
    public async Task File_to_nbdkit_memory_keeps_holes_as_holes()
    {
        string image = SparseImage("source.img");
        using var server = PeerServer.Nbdkit("memory", "64M");
        var r = await CopyAsync(image, server.Uri.ToString());
        Assert.Equal(0, r.BytesZeroed); // block status said the fresh export reads as zeroes: holes cost nothing
        Assert.Equal(Sha256(image), Sha256(NbdcopyOut(server.Uri.ToString(), "back.img")));
        var holes = Map(server.Uri.ToString()).Where(m => m.Type.Contains("hole")).Sum(m => m.Length);
        Assert.True(holes > Size / 2, $"only {holes} bytes of the destination are holes");
    }

    [Fact]
    public async Task File_onto_our_export_with_data_needs_overwrite_and_zeroes_the_holes()
    {
        string image = SparseImage("source.img");
        await using var ours = new TestServer();
        var store = ours.Add("disk", new MemoryBlockStore(Size + (1 << 20)));
        var junk = RandomNumberGenerator.GetBytes(1 << 20);
        for (long at = 0; at < store.Size; at += junk.Length)
            store.Write(at, junk, fua: false);
        string uri = ours.Uri("disk", unix: false);

        var refused = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, uri));
        Assert.Equal(DestinationProblem.Exists, refused.Problem);
        var untouched = new byte[junk.Length];
        store.Read(0, untouched);
        Assert.Equal(junk, untouched);

        var r = await CopyAsync(image, uri, DiskCopyOptions.Default with { Overwrite = true });
        Assert.True(r.BytesZeroed > Size / 2);
        var back = new byte[Size];
        store.Read(0, back);
        Assert.Equal(File.ReadAllBytes(image), back);
        // The zeroed holes are holes again, and the byte past the source is the old content.
        Assert.Contains(Map(uri), m => m.Type.Contains("hole") && m.Length >= 4 << 20);
        var tail = new byte[1];
        store.Read(Size, tail);
        Assert.Equal(junk[0], tail[0]);
    }

    [Fact]
    public async Task Tls_and_unix_socket_sources()
    {
        string image = SparseImage("source.img");
        using var certs = new TestCertificates(_dir);
        using (var tls = PeerServer.Nbdkit("-r", "--tls=require", $"--tls-certificates={_dir}", "file", image))
        {
            var options = DiskCopyOptions.Default with
            {
                Client = NbdClientOptions.Default with { Tls = new NbdClientTlsOptions { CertificateAuthorities = new System.Security.Cryptography.X509Certificates.X509Certificate2Collection(certs.Authority) } },
            };
            string target = PathOf("tls.img");
            var r = await CopyAsync(tls.Uri.WithTls(true).ToString(), target, options);
            Assert.StartsWith("nbds://", r.Source);
            AssertSameFiles(image, target);
        }
        using (var unix = PeerServer.NbdkitUnix("file", image))
        {
            string target = PathOf("unix.img");
            await CopyAsync(unix.Uri.ToString(), target);
            AssertSameFiles(image, target);
        }
    }

    [Fact]
    public async Task Destinations_that_cannot_take_the_copy_are_refused_before_writing()
    {
        string image = SparseImage("source.img");
        using (var readOnly = PeerServer.Nbdkit("-r", "memory", "64M"))
        {
            var e = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, readOnly.Uri.ToString()));
            Assert.Equal(DestinationProblem.ReadOnly, e.Problem);
        }
        using (var small = PeerServer.Nbdkit("memory", "32M"))
        {
            var e = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, small.Uri.ToString()));
            Assert.Equal(DestinationProblem.TooSmall, e.Problem);
            Assert.DoesNotContain(Map(small.Uri.ToString()), m => !m.Type.Contains("hole"));
        }
        string existing = PathOf("existing.img");
        File.WriteAllBytes(existing, RandomNumberGenerator.GetBytes((int)Size));
        string before = Sha256(existing);
        var exists = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, existing));
        Assert.Equal(DestinationProblem.Exists, exists.Problem);
        Assert.Equal(before, Sha256(existing));
        var same = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, image, DiskCopyOptions.Default with { Overwrite = true }));
        Assert.Equal(DestinationProblem.SameAsSource, same.Problem);

        // With overwrite the existing file becomes the copy, holes included, and sparse.
        await CopyAsync(image, existing, DiskCopyOptions.Default with { Overwrite = true, Flush = true });
        AssertSameFiles(image, existing);
        Assert.True(Allocated(existing) <= Allocated(image) + (1 << 20));
    }

    [Fact]
    public async Task Zero_blocks_in_data_are_detected_unless_turned_off()
    {
        // An image whose "data" is mostly zeroes (a file system's empty blocks, written out).
        string image = PathOf("zeros.img");
        var content = new byte[Size];
        RandomNumberGenerator.Fill(content.AsSpan(0, 1 << 20));
        File.WriteAllBytes(image, content);
        var sparse = await CopyAsync(image, PathOf("sparse.img"));
        Assert.Equal(1 << 20, sparse.BytesWritten);
        Assert.True(Allocated(PathOf("sparse.img")) <= 2 << 20);
        var dense = await CopyAsync(image, PathOf("dense.img"), DiskCopyOptions.Default with { SparseBlockSize = 0 });
        Assert.Equal(Size, dense.BytesWritten);
        AssertSameFiles(image, PathOf("sparse.img"));
        AssertSameFiles(image, PathOf("dense.img"));
    }

    [Fact]
    public async Task Hashes_equal_sha256sum_and_the_other_tools()
    {
        string image = SparseImage("source.img");
        using var server = PeerServer.Nbdkit("-r", "file", image);
        string sha256sum = ExternalTool.Run("sha256sum", image).AssertSuccess("sha256sum").StdOut.Split(' ')[0];
        var progress = new DiskProgress();
        var h = await DiskHasher.HashAsync(DiskLocation.Parse(server.Uri.ToString()), DiskCopyOptions.Default, progress, CancellationToken.None).WaitAsync(Limit);
        Assert.Equal(sha256sum, h.Hash);
        Assert.Equal("SHA256", h.Algorithm);
        Assert.True(h.BytesRead < Size / 2 && h.BytesSkipped > Size / 2, "holes were read");
        Assert.Equal(Size, progress.Done);
        foreach (var (algorithm, tool) in new[] { ("MD5", "md5sum"), ("SHA1", "sha1sum"), ("SHA512", "sha512sum") })
        {
            var options = DiskCopyOptions.Default with { HashAlgorithm = DiskHasher.ParseAlgorithm(algorithm) };
            var local = await DiskHasher.HashAsync(DiskLocation.Parse(image), options, new DiskProgress(), CancellationToken.None).WaitAsync(Limit);
            Assert.Equal(ExternalTool.Run(tool, image).AssertSuccess(tool).StdOut.Split(' ')[0], local.Hash);
        }
    }

    [Fact]
    public async Task Verify_hashes_both_sides()
    {
        string image = SparseImage("source.img");
        using var server = PeerServer.Nbdkit("memory", "80M");
        var r = await CopyAsync(image, server.Uri.ToString(), DiskCopyOptions.Default with { Verify = true, Flush = true });
        Assert.Equal("SHA256", r.HashAlgorithm);
        Assert.Equal(Sha256(image), r.SourceHash);
        Assert.Equal(r.SourceHash, r.DestinationHash);
        Assert.True(r.Flushed);
    }

    [Fact]
    public async Task Cancelling_closes_every_connection_and_says_how_far_it_got()
    {
        await using var ours = new TestServer();
        var slow = new FaultInjectingBlockStore(new MemoryBlockStore(Size))
        {
            Fault = (op, _, _) => { if (op == "read") Thread.Sleep(100); return null; },
        };
        var fill = RandomNumberGenerator.GetBytes((int)Size);
        slow.Write(0, fill, fua: false);
        ours.Add("slow", slow);
        using var cts = new CancellationTokenSource();
        var progress = new DiskProgress();
        var copy = CopyAsync(ours.Uri("slow", unix: false), PathOf("partial.img"), DiskCopyOptions.Default with { RequestSize = 1 << 20 }, progress, cts.Token);
        var clock = Stopwatch.StartNew();
        while (progress.Done == 0 && clock.Elapsed < Limit)
            await Task.Delay(20);
        Assert.True(ours.Server.ConnectionCount >= 1);
        cts.Cancel();
        var e = await Assert.ThrowsAsync<DiskOperationCanceledException>(() => copy);
        Assert.True(e.BytesDone > 0 && e.BytesDone < Size, $"done {e.BytesDone}");
        Assert.Contains("keeps what was written", e.Message);
        clock.Restart();
        while (ours.Server.ConnectionCount > 0 && clock.Elapsed < TimeSpan.FromSeconds(10))
            await Task.Delay(20);
        Assert.Equal(0, ours.Server.ConnectionCount);
        Assert.True(File.Exists(PathOf("partial.img")));
    }

    [Fact]
    public async Task A_server_error_part_way_says_which_side_failed_and_how_far_it_got()
    {
        await using var ours = new TestServer();
        var source = new FaultInjectingBlockStore(new MemoryBlockStore(Size))
        {
            Fault = (op, offset, _) => op == "read" && offset >= 40 << 20 ? new StorageException(5, "injected read failure") : null,
        };
        source.Write(0, RandomNumberGenerator.GetBytes((int)Size), fua: false);
        ours.Add("failing", source);
        var read = await Assert.ThrowsAsync<DiskIOException>(() => CopyAsync(ours.Uri("failing", unix: false), PathOf("a.img"),
            DiskCopyOptions.Default with { Connections = 1, RequestSize = 1 << 20 }));
        Assert.Equal(DiskSide.Source, read.Side);
        Assert.True(read.CompleteUpTo <= 40 << 20 && read.BytesDone > 0, $"up to {read.CompleteUpTo}, done {read.BytesDone}");
        Assert.IsType<NbdCommandException>(read.InnerException);
        Assert.Contains("offset", read.Message);

        var target = new FaultInjectingBlockStore(new MemoryBlockStore(Size))
        {
            Fault = (op, offset, _) => op == "write" && offset >= 20 << 20 ? new StorageException(28, "disk full") : null,
        };
        ours.Add("full", target);
        var write = await Assert.ThrowsAsync<DiskIOException>(() => CopyAsync(SparseImage("source.img"), ours.Uri("full", unix: false)));
        Assert.Equal(DiskSide.Destination, write.Side);
        Assert.Equal(Engine.Protocol.NbdError.NoSpace, Assert.IsType<NbdCommandException>(write.InnerException).Error);
    }

    [Fact]
    public async Task A_source_server_that_dies_mid_copy_fails_the_copy()
    {
        using var server = PeerServer.Nbdkit("--filter=delay", "pattern", "1G", "delay-read=200ms");
        var progress = new DiskProgress();
        var copy = CopyAsync(server.Uri.ToString(), PathOf("dead.img"), progress: progress);
        var clock = Stopwatch.StartNew();
        while (progress.Done == 0 && clock.Elapsed < Limit)
            await Task.Delay(20);
        server.Kill();
        var e = await Assert.ThrowsAsync<DiskIOException>(() => copy);
        Assert.Equal(DiskSide.Source, e.Side);
        Assert.IsType<NbdConnectionException>(e.InnerException);
    }

    /// <summary>Needs root and a free loop device, so it belongs to the kernel suite (like the loop-device store test).</summary>
    [Kernel.KernelFact]
    [Trait("Category", "Kernel")]
    public async Task A_loop_device_destination_gets_the_data_and_zeroed_holes()
    {
        if (!File.Exists("/dev/loop-control"))
            ExternalTool.Run("modprobe", "loop").AssertSuccess("modprobe loop");
        string image = SparseImage("source.img");
        string backing = PathOf("backing.img");
        File.WriteAllBytes(backing, RandomNumberGenerator.GetBytes((int)Size));
        string device = ExternalTool.Run("losetup", "--find", "--show", backing).AssertSuccess("losetup").StdOut.Trim();
        try
        {
            var refused = await Assert.ThrowsAsync<DiskDestinationException>(() => CopyAsync(image, device));
            Assert.Equal(DestinationProblem.Exists, refused.Problem);
            var r = await CopyAsync(image, device, DiskCopyOptions.Default with { Overwrite = true, Flush = true });
            Assert.True(r.BytesZeroed > Size / 2);
            AssertSameFiles(image, device);
        }
        finally
        {
            ExternalTool.Run("losetup", "-d", device);
        }
    }
}
