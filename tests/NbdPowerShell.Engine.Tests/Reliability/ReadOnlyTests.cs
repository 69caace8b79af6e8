using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Reliability;

/// <summary>
/// Read-only is absolute: every command 0..10 (and others) with every flag bit, at edge offsets
/// and lengths, in both reply modes, never changes a byte of the file or its modification time,
/// and no modifying command is ever answered with success. (The fuzz run checks the same file
/// hash after 100,000 mutated inputs.)
/// </summary>
public class ReadOnlyTests
{
    private const int Size = 1 << 20;
    private readonly ITestOutputHelper _output;

    public ReadOnlyTests(ITestOutputHelper output) => _output = output;

    [Theory]
    [InlineData(true)]  // the export is read-only; the store underneath would accept writes
    [InlineData(false)] // the store itself is opened read-only
    public async Task A_read_only_export_never_changes_a_byte_whatever_the_client_sends(bool readOnlyByDefinition)
    {
        using var scratch = new ScratchDirectory();
        string path = scratch.File("ro.img");
        var content = new byte[Size];
        new Random(5).NextBytes(content);
        File.WriteAllBytes(path, content);
        File.SetLastWriteTimeUtc(path, new DateTime(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        byte[] hashBefore = SHA256.HashData(File.ReadAllBytes(path));
        var mtimeBefore = File.GetLastWriteTimeUtc(path);

        await using var server = new NbdServer();
        var tcp = server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        server.AddExport(new ExportDefinition("ro", FileBlockStore.Open(path, readOnly: !readOnlyByDefinition)) { ReadOnly = readOnlyByDefinition });

        ushort[] commands = Enumerable.Range(0, 11).Where(c => c != (int)NbdCommand.Disconnect).Select(c => (ushort)c)
            .Concat(new ushort[] { 11, 0x100, 0x7FFF, 0xFFFF }).ToArray();
        ushort[] flagSets = new ushort[] { 0, 0x1F, 0xFFFF }.Concat(Enumerable.Range(0, 16).Select(b => (ushort)(1 << b))).ToArray();
        ulong[] offsets = { 0, Size - 4096, Size, 1UL << 63, ulong.MaxValue };
        uint[] lengths = { 0, 1, 4096, 65536 };
        long refusedModifications = 0, requests = 0;

        foreach (bool structured in new[] { false, true })
        {
            using var c = RawNbdClient.Connect(tcp);
            var (_, flags) = c.Go("ro", structured, baseAllocation: structured);
            Assert.True(flags.HasFlag(TransmissionFlags.ReadOnly));
            Assert.False(flags.HasFlag(TransmissionFlags.SendTrim) || flags.HasFlag(TransmissionFlags.SendWriteZeroes) || flags.HasFlag(TransmissionFlags.SendFua));
            ulong cookie = 0;
            var pending = new Dictionary<ulong, (ushort Command, uint Length)>();
            foreach (var command in commands)
            foreach (var f in flagSets)
            foreach (var offset in offsets)
            foreach (var length in lengths)
            {
                var payload = command == (ushort)NbdCommand.Write ? new byte[length] : Array.Empty<byte>();
                payload.AsSpan().Fill(0xA5);
                c.SendRequest((NbdCommand)command, offset, length, ++cookie, (NbdCommandFlags)f, payload);
                pending[cookie] = (command, length);
                requests++;
                if (pending.Count == 16)
                    refusedModifications += Drain(c, pending);
            }
            refusedModifications += Drain(c, pending);
            c.SendRequest(NbdCommand.Disconnect, 0, 0, ++cookie);
            Assert.True(c.WaitForClose());
        }

        var stats = server.GetExport("ro")!.Io;
        Assert.Equal((0L, 0L, 0L), (stats.Writes, stats.Trims, stats.Zeroes));
        Assert.Equal(hashBefore, SHA256.HashData(File.ReadAllBytes(path)));
        Assert.Equal(mtimeBefore, File.GetLastWriteTimeUtc(path));
        _output.WriteLine($"READONLY mode={(readOnlyByDefinition ? "definition" : "store")} requests={requests} modifyingRefused={refusedModifications} hashUnchanged=true");
    }

    /// <summary>Reads every pending reply; fails if a WRITE, TRIM or WRITE_ZEROES succeeded. Returns how many were refused.</summary>
    private static int Drain(RawNbdClient c, Dictionary<ulong, (ushort Command, uint Length)> pending)
    {
        int refused = 0;
        while (pending.Count > 0)
        {
            var chunk = c.ReadChunk();
            Assert.True(pending.TryGetValue(chunk.Cookie, out var req), $"reply for unknown cookie {chunk.Cookie}");
            bool simple = chunk.Type == NbdReplyChunkType.None && chunk.Payload.Length == 4;
            var error = simple || chunk.Type == NbdReplyChunkType.Error ? (NbdError)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload) : NbdError.None;
            if (simple && error == NbdError.None && req.Command == (ushort)NbdCommand.Read)
                c.ReadExactly((int)req.Length);
            if (req.Command is (ushort)NbdCommand.Write or (ushort)NbdCommand.Trim or (ushort)NbdCommand.WriteZeroes)
            {
                Assert.True(error != NbdError.None, $"a modifying command {req.Command} was acknowledged on a read-only export");
                refused++;
            }
            if ((chunk.Flags & (ushort)NbdReplyChunkFlags.Done) != 0)
                pending.Remove(chunk.Cookie);
        }
        return refused;
    }
}
