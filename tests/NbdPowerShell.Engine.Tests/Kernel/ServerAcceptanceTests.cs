using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel.Supervision;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>The checks a replacement server must pass, against our own server over TCP (no kernel needed).</summary>
public sealed class ServerAcceptanceTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private TestServer _server = null!;

    public Task InitializeAsync()
    {
        _server = new TestServer();
        _server.Add("a", Filled(Size, seed: 1), readOnly: true);
        _server.Add("a-copy", Filled(Size, seed: 1), readOnly: true);
        _server.Add("b", Filled(Size, seed: 2), readOnly: true);
        _server.Add("bigger", Filled(Size + 4096, seed: 1), readOnly: true);
        _server.Add("rw", Filled(Size, seed: 1));
        _server.Add("rw-no-fua", new ArrayBlockStore((int)Size, StoreCapabilities.Write | StoreCapabilities.Flush | StoreCapabilities.Trim));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    /// <summary>A memory store whose blocks depend on their offset and the seed, so copies match and others do not.</summary>
    private static MemoryBlockStore Filled(long size, int seed)
    {
        var store = new MemoryBlockStore(size);
        var block = new byte[4096];
        for (long offset = 0; offset < size; offset += block.Length)
        {
            new Random(unchecked((int)(offset / 4096) * 31 + seed)).NextBytes(block);
            store.Write(offset, block.AsSpan(0, (int)Math.Min(block.Length, size - offset)), fua: false);
        }
        return store;
    }

    private Task<NbdNegotiatedConnection> Connect(string export) =>
        NbdClient.ConnectAsync(NbdUri.ForTcp("127.0.0.1", _server.Port, export));

    /// <summary>The record a supervised attach over <paramref name="c"/> would write (index 0, one connection, 5 s / 30 s timeouts).</summary>
    internal static async Task<SupervisionRecord> RecordOf(NbdNegotiatedConnection c, bool readOnly, IReadOnlyList<string>? servers = null) => new()
    {
        Index = 0,
        BackendIdentifier = c.Uri.ToString(),
        Servers = servers ?? [c.Uri.ToString()],
        ExportName = c.ExportName,
        Size = c.Size,
        TransmissionFlags = c.Flags,
        ReadOnly = readOnly,
        Connections = 1,
        RequestTimeoutSeconds = 5,
        DeadConnectionTimeoutSeconds = 30,
        ContentFingerprint = readOnly ? await ContentFingerprint.ComputeAsync(c) : null,
    };

    [Fact]
    public void Offsets_spread_from_the_first_to_the_last_whole_block()
    {
        var offsets = ContentFingerprint.Offsets(Size);
        Assert.Equal(ContentFingerprint.Blocks, offsets.Count);
        Assert.Equal(0, offsets[0]);
        Assert.Equal(Size - 4096, offsets[^1]);
        Assert.All(offsets, o => Assert.Equal(0, o % 4096));
        Assert.Equal(offsets.Order(), offsets);
        Assert.Equal([0L], ContentFingerprint.Offsets(100));
        Assert.Equal(3, ContentFingerprint.Offsets(3 * 4096).Count); // fewer blocks than samples: each once
    }

    [Fact]
    public async Task Identical_images_match_and_other_content_or_size_does_not()
    {
        await using var a = await Connect("a");
        await using var copy = await Connect("a-copy");
        await using var b = await Connect("b");
        await using var bigger = await Connect("bigger");
        string fa = await ContentFingerprint.ComputeAsync(a);
        Assert.StartsWith("v1:16x4096:sha256:", fa);
        Assert.Equal(fa, await ContentFingerprint.ComputeAsync(copy));
        Assert.NotEqual(fa, await ContentFingerprint.ComputeAsync(b));
        Assert.NotEqual(fa, await ContentFingerprint.ComputeAsync(bigger));
    }

    [Fact]
    public async Task A_copy_is_accepted_and_a_different_image_is_refused_for_its_content()
    {
        await using var a = await Connect("a");
        var record = await RecordOf(a, readOnly: true);
        await using var copy = await Connect("a-copy");
        await using var b = await Connect("b");
        // The URIs name other exports: compare as if each were a replica serving the same export name.
        var asReplica = record with { ExportName = "a-copy", Servers = [copy.Uri.ToString()] };
        Assert.Null(await ServerAcceptance.CheckAsync(asReplica, copy, default));
        var refusal = await ServerAcceptance.CheckAsync(record with { ExportName = "b", Servers = [b.Uri.ToString()] }, b, default);
        Assert.Contains("content", refusal);
    }

    [Fact]
    public async Task Other_size_export_name_or_read_only_state_is_refused()
    {
        await using var a = await Connect("a");
        var record = await RecordOf(a, readOnly: true);
        await using var bigger = await Connect("bigger");
        Assert.Contains("bytes", ServerAcceptance.Check(record with { ExportName = "bigger" }, bigger));
        await using var copy = await Connect("a-copy");
        Assert.Contains("export 'a-copy'", ServerAcceptance.Check(record, copy));
        await using var rw = await Connect("rw");
        Assert.Contains("writable", ServerAcceptance.Check(record with { ExportName = "rw" }, rw));
    }

    [Fact]
    public async Task A_writable_device_needs_every_write_command_it_was_given()
    {
        await using var rw = await Connect("rw");
        var record = await RecordOf(rw, readOnly: false);
        Assert.True(record.TransmissionFlags.HasFlag(TransmissionFlags.SendFua));
        Assert.Null(ServerAcceptance.Check(record, rw));

        // A server of the same size that lacks FUA cannot take over: the kernel would send FUA writes it refuses.
        await using var noFua = await Connect("rw-no-fua");
        Assert.False(noFua.Flags.HasFlag(TransmissionFlags.SendFua));
        Assert.Contains("SendFua", ServerAcceptance.Check(record with { ExportName = "rw-no-fua" }, noFua));
        // Flags the kernel never turns into commands do not matter.
        var onlyHints = record with { ExportName = "rw-no-fua", TransmissionFlags = noFua.Flags | TransmissionFlags.SendDf | TransmissionFlags.Rotational };
        Assert.Null(ServerAcceptance.Check(onlyHints, noFua));
        // A read-only device only reads: write commands are not required, multi-conn is when it has several sockets.
        Assert.Equal(TransmissionFlags.None, ServerAcceptance.RequiredFlags(record with { ReadOnly = true }));
        Assert.Equal(TransmissionFlags.CanMultiConn, ServerAcceptance.RequiredFlags(record with { ReadOnly = true, Connections = 2 }));
    }
}
