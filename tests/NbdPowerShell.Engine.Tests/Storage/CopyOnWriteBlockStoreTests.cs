using System.Security.Cryptography;
using NbdPowerShell.Engine.Storage;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Storage;

public sealed class CopyOnWriteBlockStoreTests : IDisposable
{
    private const int Block = 4096;
    private static readonly ExtentFlags HoleZero = ExtentFlags.Hole | ExtentFlags.Zero;

    private readonly ScratchDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>A writable base file of random bytes; its size is deliberately not a multiple of the block size.</summary>
    private (string Path, byte[] Content) RandomBaseFile(int size = 64 * Block + 100)
    {
        var content = new byte[size];
        new Random(3).NextBytes(content);
        string path = _dir.File("base.img");
        File.WriteAllBytes(path, content);
        return (path, content);
    }

    private CopyOnWriteBlockStore Overlay(IBlockStore baseStore, bool fileOverlay) => fileOverlay
        ? CopyOnWriteBlockStore.WithTemporaryFileOverlay(baseStore, _dir.Path, Block)
        : CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, Block);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Changes_read_back_through_the_overlay_and_never_reach_the_base(bool fileOverlay)
    {
        var (path, content) = RandomBaseFile();
        byte[] hashBefore = SHA256.HashData(File.ReadAllBytes(path));
        var model = (byte[])content.Clone();
        var rng = new Random(4);

        using (var baseStore = FileBlockStore.Open(path, readOnly: false))
        using (var cow = Overlay(baseStore, fileOverlay))
        {
            Assert.Equal(content.Length, cow.Size);
            Assert.Equal("cow:file:" + path, cow.Description);

            // Unchanged store reads the base.
            var all = new byte[content.Length];
            cow.Read(0, all);
            Assert.Equal(content, all);

            void Write(int offset, int length, bool fua)
            {
                var data = new byte[length];
                rng.NextBytes(data);
                cow.Write(offset, data, fua);
                data.CopyTo(model, offset);
            }
            void Zero(int offset, int length) => Array.Clear(model, offset, length);

            Write(100, 10, fua: false);                        // Inside one block: copy-up keeps the rest.
            Write(Block - 5, 2 * Block + 11, fua: true);       // Partial, whole, partial.
            Write(8 * Block, 3 * Block, fua: false);           // Whole blocks only.
            Write(8 * Block + 7, 20, fua: false);              // Into a block already in the overlay.
            Write(content.Length - 50, 50, fua: false);        // The short last block.
            cow.WriteZeroes(20 * Block + 1, 5 * Block, mayPunch: true, fastOnly: false, fua: false);
            Zero(20 * Block + 1, 5 * Block);
            cow.WriteZeroes(30 * Block, 2 * Block, mayPunch: false, fastOnly: true, fua: true);
            Zero(30 * Block, 2 * Block);
            cow.Trim(40 * Block + 10, 3 * Block, fua: false);  // Rounds inward: blocks 41 and 42.
            Zero(41 * Block, 2 * Block);
            cow.Flush();

            cow.Read(0, all);
            Assert.Equal(model, all);

            var piece = new byte[3 * Block + 3];
            cow.Read(Block - 7, piece);
            Assert.Equal(model.AsSpan(Block - 7, piece.Length).ToArray(), piece);
        }

        Assert.Equal(hashBefore, SHA256.HashData(File.ReadAllBytes(path)));
    }

    [Fact]
    public void Partial_write_keeps_the_surrounding_base_bytes()
    {
        var (path, content) = RandomBaseFile();
        using var baseStore = FileBlockStore.Open(path, readOnly: true);
        using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, Block);

        cow.Write(5 * Block + 1000, new byte[] { 0xAB, 0xCD }, fua: false);

        Assert.Equal(1, cow.BlocksInOverlay);
        var block = new byte[Block];
        cow.Read(5 * Block, block);
        var expected = content.AsSpan(5 * Block, Block).ToArray();
        expected[1000] = 0xAB;
        expected[1001] = 0xCD;
        Assert.Equal(expected, block);
    }

    [Fact]
    public void Concurrent_partial_writes_to_one_block_keep_every_piece_and_the_base_between()
    {
        const int blockSize = 65536, blocks = 32, piece = 512, threads = 4;
        using var baseStore = new MemoryBlockStore(blocks * blockSize);
        var content = new byte[blocks * blockSize];
        new Random(5).NextBytes(content);
        baseStore.Write(0, content, fua: false);

        for (int round = 0; round < 10; round++)
        {
            using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, blockSize);
            // Every thread writes its share of the even pieces of each block in turn, so all threads
            // reach each block's copy-up together; odd pieces must keep the base bytes.
            using var start = new Barrier(threads);
            var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
            {
                var data = new byte[piece];
                start.SignalAndWait();
                for (int b = 0; b < blocks; b++)
                {
                    for (int p = 2 * t; p < blockSize / piece; p += 2 * threads)
                    {
                        Array.Fill(data, (byte)(p + 1));
                        cow.Write((long)b * blockSize + p * piece, data, fua: false);
                    }
                }
            })).ToList();
            workers.ForEach(w => w.Start());
            workers.ForEach(w => w.Join());

            var all = new byte[blocks * blockSize];
            cow.Read(0, all);
            for (int i = 0; i < all.Length; i++)
            {
                int p = i % blockSize / piece;
                byte expected = p % 2 == 0 ? (byte)(p + 1) : content[i];
                if (all[i] != expected)
                    Assert.Fail($"round {round}: byte {i} is {all[i]}, expected {expected}");
            }
        }
    }

    [Fact]
    public void Extents_combine_base_and_overlay()
    {
        const int size = 16 * Block;
        using var baseStore = new MemoryBlockStore(size);       // 64 KiB chunks: the whole base is one chunk.
        baseStore.Write(0, new byte[] { 1 }, fua: false);        // Base: [0, 64 KiB) data.
        using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, Block);
        cow.WriteZeroes(4 * Block, 4 * Block, mayPunch: true, fastOnly: false, fua: false); // Overlay hole over base data.

        var extents = new List<Extent>();
        cow.GetExtents(0, size, extents, 10);

        Assert.Equal(new[] { new Extent(4 * Block, ExtentFlags.Data), new Extent(4 * Block, HoleZero), new Extent(8 * Block, ExtentFlags.Data) }, extents);

        extents.Clear();
        cow.GetExtents(Block, size - Block, extents, 1);
        Assert.Equal(new[] { new Extent(3 * Block, ExtentFlags.Data) }, extents);
    }

    [Fact]
    public void Fast_zero_that_needs_a_copy_up_fails_with_ENOTSUP_and_changes_nothing()
    {
        var (path, content) = RandomBaseFile();
        using var baseStore = FileBlockStore.Open(path, readOnly: true);
        using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, Block);

        var e = Assert.Throws<StorageException>(() => cow.WriteZeroes(Block + 1, 2 * Block, mayPunch: true, fastOnly: true, fua: false));

        Assert.Equal(95, e.Errno);
        Assert.Equal(0, cow.BlocksInOverlay);
        var all = new byte[content.Length];
        cow.Read(0, all);
        Assert.Equal(content, all);
    }

    [Fact]
    public void Empty_requests_change_nothing()
    {
        var (path, content) = RandomBaseFile();
        using var baseStore = FileBlockStore.Open(path, readOnly: true);
        using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, Block);

        cow.Write(0, ReadOnlySpan<byte>.Empty, fua: true);
        cow.WriteZeroes(0, 0, mayPunch: true, fastOnly: true, fua: true);
        cow.Trim(Block, 0, fua: true);
        cow.Read(0, Span<byte>.Empty);

        Assert.Equal(0, cow.BlocksInOverlay);
    }

    [Fact]
    public void Capabilities_include_writes_even_over_a_read_only_base()
    {
        var (path, _) = RandomBaseFile();
        using var baseStore = FileBlockStore.Open(path, readOnly: true);
        using var cow = CopyOnWriteBlockStore.WithMemoryOverlay(baseStore);

        var expected = StoreCapabilities.Write | StoreCapabilities.Flush | StoreCapabilities.Fua | StoreCapabilities.Trim |
            StoreCapabilities.WriteZeroes | StoreCapabilities.FastZero | StoreCapabilities.Extents | StoreCapabilities.Cache |
            StoreCapabilities.MultiConnCoherent;
        Assert.Equal(expected, cow.Capabilities);
    }

    [Fact]
    public void Temporary_file_overlay_is_gone_after_dispose_and_base_is_disposed_only_when_owned()
    {
        var (path, _) = RandomBaseFile();
        string overlayDir = Directory.CreateDirectory(_dir.File("overlays")).FullName;
        var baseStore = FileBlockStore.Open(path, readOnly: true);

        var cow = CopyOnWriteBlockStore.WithTemporaryFileOverlay(baseStore, overlayDir, Block);
        cow.Write(3, new byte[] { 1, 2, 3 }, fua: true);
        Assert.Single(ScratchDirectory.OpenDescriptorsUnder(overlayDir));
        Assert.Empty(Directory.EnumerateFileSystemEntries(overlayDir));
        cow.Dispose();
        Assert.Empty(ScratchDirectory.OpenDescriptorsUnder(overlayDir));
        baseStore.Read(0, new byte[1]); // Not owned: still usable.

        var owning = CopyOnWriteBlockStore.WithTemporaryFileOverlay(baseStore, overlayDir, Block, ownsBase: true);
        owning.Dispose();
        Assert.Empty(ScratchDirectory.OpenDescriptorsUnder(overlayDir));
        Assert.Throws<ObjectDisposedException>(() => baseStore.Read(0, new byte[1]));
    }

    [Fact]
    public void Rejects_a_bad_block_size_or_a_small_overlay()
    {
        using var baseStore = new MemoryBlockStore(1 << 20);
        using var small = new MemoryBlockStore(1 << 19);
        Assert.Throws<ArgumentOutOfRangeException>(() => new CopyOnWriteBlockStore(baseStore, new MemoryBlockStore(1 << 20), 1000));
        Assert.Throws<ArgumentException>(() => new CopyOnWriteBlockStore(baseStore, small));
    }
}
