using System.Net;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Tests.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Reliability;

/// <summary>
/// Durability: the server runs in a child process (the bench host) over a file; writes that were
/// acknowledged after a FLUSH, or with FUA, must be in the file after the process is killed with
/// SIGKILL while more writes are still in flight. SIGKILL leaves the page cache alone, so this
/// proves the server replies only after the data reached the kernel (and that FUA/FLUSH are not
/// acknowledged early from a user-space buffer); it does not simulate power loss.
/// </summary>
public class DurabilityTests
{
    private const int Block = 4096;
    private const int FlushedBlocks = 256;
    private const int FuaAcksBeforeKill = 300;
    private readonly ITestOutputHelper _output;

    public DurabilityTests(ITestOutputHelper output) => _output = output;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Flushed_and_FUA_writes_survive_SIGKILL_of_the_serving_process(bool unix)
    {
        using var scratch = new ScratchDirectory();
        string path = scratch.SparseFile("disk.img", 16 << 20);
        string socket = scratch.File("nbd.sock");
        using var host = unix
            ? BenchHost.Start("--file", "d:" + path, "--unix", socket)
            : BenchHost.Start("--file", "d:" + path);
        var expected = RunUntilKilled(
            () => unix ? RawNbdClient.ConnectUnix(socket) : RawNbdClient.Connect(new IPEndPoint(IPAddress.Loopback, host.Port)),
            "d", host.Kill, new Random(unix ? 21 : 20), unix ? "unix" : "tcp");
        AssertOnDisk(path, expected);
    }

    /// <summary>The same against the NbdPowerShell service: a persistent file export, the service killed with SIGKILL.</summary>
    [Fact]
    public async Task Flushed_and_FUA_writes_survive_SIGKILL_of_the_service()
    {
        await using var service = new TestService();
        string path = Path.Combine(service.Directory, "disk.img");
        using (var fs = new FileStream(path, FileMode.CreateNew))
            fs.SetLength(16 << 20);
        await service.StartProcessAsync();
        var export = await service.Client.StartExportAsync(
            new ExportSpec { Name = "d", Path = path, Listeners = [ListenerSpec.Tcp("127.0.0.1", 0)] }, replace: false, persistent: true, CancellationToken.None);
        var expected = RunUntilKilled(() => RawNbdClient.Connect(new IPEndPoint(IPAddress.Loopback, export.Value.Port)), "d", service.Kill, new Random(22), "service");
        AssertOnDisk(path, expected);
    }

    /// <summary>
    /// Plain writes then FLUSH, then FUA writes pipelined 32 deep until enough are acknowledged, then <paramref name="kill"/>
    /// with more in flight. Returns every block whose write was acknowledged as durable.
    /// </summary>
    private Dictionary<int, byte[]> RunUntilKilled(Func<RawNbdClient> connect, string export, Action kill, Random rng, string label)
    {
        var expected = new Dictionary<int, byte[]>();
        using var c = connect();
        var (_, flags) = c.Go(export);
        Assert.True(flags.HasFlag(TransmissionFlags.SendFlush) && flags.HasFlag(TransmissionFlags.SendFua));

        // 1. Plain writes, all acknowledged, then FLUSH acknowledged.
        ulong cookie = 0;
        for (int slot = 0; slot < FlushedBlocks; slot++)
        {
            var data = RandomBlock(rng);
            c.SendRequest(NbdCommand.Write, (ulong)slot * Block, Block, ++cookie, payload: data);
            Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);
            expected[slot] = data;
        }
        c.SendRequest(NbdCommand.Flush, 0, 0, ++cookie);
        Assert.Equal(NbdError.None, c.ReadSimpleReply().Error);

        // 2. FUA writes pipelined 32 deep; kill the server as soon as enough are acknowledged, with more in flight.
        var sent = new Dictionary<ulong, (int Slot, byte[] Data)>();
        var acked = new List<ulong>();
        using var window = new SemaphoreSlim(32);
        var reader = new Thread(() =>
        {
            try
            {
                while (true)
                {
                    var (error, replyCookie, _) = c.ReadSimpleReply();
                    Assert.Equal(NbdError.None, error);
                    lock (acked)
                        acked.Add(replyCookie);
                    window.Release();
                }
            }
            catch (Exception e) when (e is EndOfStreamException or System.Net.Sockets.SocketException or ObjectDisposedException)
            {
            }
        }) { IsBackground = true };
        reader.Start();
        int nextSlot = FlushedBlocks;
        while (true)
        {
            lock (acked)
            {
                if (acked.Count >= FuaAcksBeforeKill)
                    break;
            }
            Assert.True(window.Wait(TimeSpan.FromSeconds(10)), "FUA writes stopped being acknowledged");
            var data = RandomBlock(rng);
            lock (acked)
                sent[++cookie] = (nextSlot, data);
            c.SendRequest(NbdCommand.Write, (ulong)nextSlot++ * Block, Block, cookie, NbdCommandFlags.Fua, data);
        }
        kill();
        Assert.True(reader.Join(TimeSpan.FromSeconds(10)));
        lock (acked)
        {
            foreach (var k in acked)
                expected[sent[k].Slot] = sent[k].Data;
        }
        _output.WriteLine($"DURABILITY transport={label} flushedBlocks={FlushedBlocks} fuaAcked={acked.Count} fuaSent={sent.Count}");
        return expected;
    }

    /// <summary>Reopen after the process is gone: every acknowledged block must be there.</summary>
    private static void AssertOnDisk(string path, Dictionary<int, byte[]> expected)
    {
        var onDisk = File.ReadAllBytes(path);
        foreach (var (slot, data) in expected)
            Assert.True(data.AsSpan().SequenceEqual(onDisk.AsSpan(slot * Block, Block)), $"acknowledged block {slot} is missing after SIGKILL");
    }

    private static byte[] RandomBlock(Random rng)
    {
        var b = new byte[Block];
        rng.NextBytes(b);
        return b;
    }
}
