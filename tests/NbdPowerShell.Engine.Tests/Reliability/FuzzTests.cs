using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
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
/// Hostile input: at least 100,000 seeded, structure-aware mutations of greetings, option
/// sequences and request headers, in batches over many parallel TCP and Unix connections. After
/// every batch a well-behaved client must still write, flush and read back correctly, and the
/// server must be back to zero connections with thread count and managed heap within bounds.
/// The read-only export's file must hash the same before and after.
/// </summary>
[Collection(SerialCollection.Name)]
public class FuzzTests
{
    /// <summary>Fixed so failures reproduce; NBD_FUZZ_SEED overrides it for exploratory runs.</summary>
    private const int DefaultSeed = 0x4E4244;
    private const int ExportSize = 1 << 20;
    private const int Batches = 20;
    private const int Workers = 6;
    private const int MinimumInputs = 100_000;
    private static readonly TimeSpan SessionLimit = TimeSpan.FromSeconds(15);
    private const int ThreadSlack = 40;
    private const long HeapSlack = 64L << 20;

    private readonly ITestOutputHelper _output;

    public FuzzTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public async Task Hundred_thousand_hostile_inputs_leave_the_server_correct_and_leak_free()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("NBD_FUZZ_SEED"), out int s) ? s : DefaultSeed;
        _output.WriteLine($"fuzz seed {seed} (set NBD_FUZZ_SEED to change)");
        using var scratch = new ScratchDirectory();
        string roPath = scratch.File("ro.img");
        var roContent = new byte[ExportSize];
        new Random(seed).NextBytes(roContent);
        File.WriteAllBytes(roPath, roContent);
        byte[] roHashBefore = SHA256.HashData(File.ReadAllBytes(roPath));
        var roMtimeBefore = File.GetLastWriteTimeUtc(roPath);

        var log = new CountingLogger();
        var server = new NbdServer(new NbdServerOptions { HandshakeTimeout = TimeSpan.FromSeconds(5) }, log);
        try
        {
            var tcp = server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
            var unix = new UnixDomainSocketEndPoint(server.ListenUnix(scratch.File("nbd.sock")));
            server.AddExport(new ExportDefinition("f", new MemoryBlockStore(ExportSize)));
            // Read-only by definition over a store opened read-write: the server alone must refuse every change.
            server.AddExport(new ExportDefinition("ro", FileBlockStore.Open(roPath, readOnly: false)) { ReadOnly = true });
            server.AddExport(new ExportDefinition("good", new MemoryBlockStore(4 * ExportSize)));

            var fuzzer = new NbdFuzzer(seed, new[] { "f", "ro" }, ExportSize);
            var goodRng = new Random(seed + 1);
            long inputs = 0, sessions = 0, bytesSent = 0, bytesReceived = 0, goodBytesVerified = 0;
            var perKind = new Dictionary<NbdFuzzer.Kind, long>();
            int hangs = 0;
            int baselineThreads = 0, maxThreads = 0;
            long baselineHeap = 0, maxHeap = 0;
            var clock = Stopwatch.StartNew();

            for (int batch = 0; batch < Batches; batch++)
            {
                // Generated up front, in order, so the byte streams depend only on the seed.
                var work = new List<NbdFuzzer.Session>();
                for (int i = 0; i < 500; i++)
                    work.Add(fuzzer.Next(NbdFuzzer.Kind.Handshake));
                for (int i = 0; i < 250; i++)
                    work.Add(fuzzer.Next(NbdFuzzer.Kind.Options));
                for (int i = 0; i < 40; i++)
                    work.Add(fuzzer.Next(NbdFuzzer.Kind.Requests));
                foreach (var w in work)
                {
                    perKind[w.Kind] = perKind.GetValueOrDefault(w.Kind) + w.Inputs;
                    inputs += w.Inputs;
                    bytesSent += w.Bytes.Length;
                }
                sessions += work.Count;

                var queue = new ConcurrentQueue<(int Index, NbdFuzzer.Session Session)>(work.Select((w, i) => (i, w)));
                long received = 0;
                var threads = Enumerable.Range(0, Workers).Select(_ => new Thread(() =>
                {
                    var buffer = new byte[256 * 1024];
                    while (queue.TryDequeue(out var item))
                    {
                        EndPoint target = item.Index % 2 == 0 ? tcp : unix;
                        var outcome = HostileConnection.Run(target, item.Session.Bytes, buffer, SessionLimit, out long got);
                        Interlocked.Add(ref received, got);
                        if (outcome == HostileConnection.Outcome.Hung)
                            Interlocked.Increment(ref hangs);
                    }
                }) { IsBackground = true, Name = "fuzz-worker" }).ToList();
                threads.ForEach(t => t.Start());
                foreach (var t in threads)
                    Assert.True(t.Join(TimeSpan.FromSeconds(120)), "a fuzz worker did not finish in time");
                bytesReceived += received;
                Assert.Equal(0, hangs);

                // The server must be back to idle: every hostile connection closed on its side too.
                Assert.True(ProcessProbe.WaitUntil(() => server.ConnectionCount == 0, TimeSpan.FromSeconds(10)),
                    $"batch {batch}: {server.ConnectionCount} connections still open after the fuzz clients left");

                goodBytesVerified += WellBehavedClientRoundTrip(batch % 2 == 0 ? tcp : unix, structured: batch % 3 == 1, goodRng);
                Assert.True(ProcessProbe.WaitUntil(() => server.ConnectionCount == 0, TimeSpan.FromSeconds(10)));

                int threadCount = ProcessProbe.ThreadCount();
                long heap = ProcessProbe.HeapBytes();
                if (batch == 0)
                {
                    baselineThreads = threadCount;
                    baselineHeap = heap;
                }
                maxThreads = Math.Max(maxThreads, threadCount);
                maxHeap = Math.Max(maxHeap, heap);
                _output.WriteLine($"batch {batch,2}: inputs {inputs,7} sessions {sessions,6} threads {threadCount,3} heap {heap / 1024,7} KiB  t={clock.Elapsed.TotalSeconds:F1}s");
                Assert.True(threadCount <= baselineThreads + ThreadSlack, $"batch {batch}: {threadCount} threads, baseline {baselineThreads}");
                Assert.True(heap <= baselineHeap + HeapSlack, $"batch {batch}: managed heap {heap} bytes, baseline {baselineHeap}");
                Assert.Empty(log.Errors);
            }

            Assert.True(inputs >= MinimumInputs, $"only {inputs} inputs were generated");
            var stats = server.GetExport("ro")!.Io;
            _output.WriteLine($"FUZZ seed={seed} inputs={inputs} handshakes={perKind[NbdFuzzer.Kind.Handshake]} options={perKind[NbdFuzzer.Kind.Options]} " +
                $"requests={perKind[NbdFuzzer.Kind.Requests]} sessions={sessions} batches={Batches} workers={Workers} " +
                $"sent={bytesSent} received={bytesReceived} goodVerified={goodBytesVerified} hangs={hangs} " +
                $"threads={baselineThreads}..{maxThreads} heapKiB={baselineHeap / 1024}..{maxHeap / 1024} ro-errors={stats.Errors} ro-writes={stats.Writes} ro-trims={stats.Trims} ro-zeroes={stats.Zeroes} " +
                $"seconds={clock.Elapsed.TotalSeconds:F1}");
            Assert.Equal((0L, 0L, 0L), (stats.Writes, stats.Trims, stats.Zeroes));
        }
        finally
        {
            await server.StopAsync();
        }

        Assert.Equal(roHashBefore, SHA256.HashData(File.ReadAllBytes(roPath)));
        Assert.Equal(roMtimeBefore, File.GetLastWriteTimeUtc(roPath));
    }

    /// <summary>GO, a FUA write of random data, FLUSH, read back and compare, DISC; returns bytes verified.</summary>
    private static int WellBehavedClientRoundTrip(EndPoint endPoint, bool structured, Random rng)
    {
        using var c = endPoint is IPEndPoint ip ? RawNbdClient.Connect(ip) : RawNbdClient.ConnectUnix(endPoint.ToString()!);
        var (size, flags) = c.Go("good", structured);
        Assert.Equal(4UL * ExportSize, size);
        Assert.False(flags.HasFlag(TransmissionFlags.ReadOnly));
        var data = new byte[65536];
        rng.NextBytes(data);
        ulong offset = (ulong)rng.Next(0, (int)(size - (ulong)data.Length) / 512) * 512;
        c.SendRequest(NbdCommand.Write, offset, (uint)data.Length, cookie: 1, flags: NbdCommandFlags.Fua, payload: data);
        Assert.Equal((NbdError.None, 1UL), Pick(c.ReadSimpleReply()));
        c.SendRequest(NbdCommand.Flush, 0, 0, cookie: 2);
        Assert.Equal((NbdError.None, 2UL), Pick(c.ReadSimpleReply()));
        c.SendRequest(NbdCommand.Read, offset, (uint)data.Length, cookie: 3);
        var read = c.ReadRead(structured, offset, data.Length);
        Assert.Equal((NbdError.None, 3UL), (read.Error, read.Cookie));
        Assert.Equal(data, read.Data);
        c.SendRequest(NbdCommand.Disconnect, 0, 0, cookie: 4);
        Assert.True(c.WaitForClose());
        return data.Length;

        static (NbdError, ulong) Pick((NbdError Error, ulong Cookie, byte[] Data) r) => (r.Error, r.Cookie);
    }
}
