using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace NbdPowerShell.Engine.Tests.Reliability;

/// <summary>
/// Load: 64 clients over 4 exports (memory, file, unnamed temporary file, copy-on-write over a
/// file) doing random writes, FUA writes, write-zeroes, trims, flushes and reads for a fixed time.
/// Each client owns a slice of its export and keeps a shadow copy, so every byte read back is
/// checked. No request may fail and no byte may differ; the heap must stay bounded.
/// </summary>
[Collection(SerialCollection.Name)]
public class LoadTests
{
    private const int Seed = 0x10AD;
    private const int Clients = 64;
    private const int ExportCount = 4;
    private const long ExportSize = 16L << 20;
    private const int SliceSize = (int)(ExportSize / (Clients / ExportCount));
    private const int Sector = 512;
    private static readonly TimeSpan Duration = TimeSpan.FromSeconds(12);
    private const long HeapSlack = 96L << 20;

    private readonly ITestOutputHelper _output;

    public LoadTests(ITestOutputHelper output) => _output = output;

    private sealed class Tally
    {
        public long Requests, Writes, Reads, Zeroes, Trims, Flushes, BytesWritten, BytesVerified;
    }

    [Fact]
    public async Task Sixty_four_clients_over_four_exports_see_no_error_and_no_wrong_byte()
    {
        _output.WriteLine($"load seed {Seed}");
        using var scratch = new ScratchDirectory();
        string filePath = scratch.SparseFile("file.img", ExportSize);
        string basePath = scratch.File("base.img");
        var baseContent = new byte[ExportSize];
        new Random(Seed).NextBytes(baseContent);
        File.WriteAllBytes(basePath, baseContent);

        var log = new CountingLogger();
        var server = new NbdServer(new NbdServerOptions(), log);
        var failures = new List<string>();
        var tally = new Tally();
        long heapBefore, heapAfter;
        int maxThreads = 0;
        var clock = Stopwatch.StartNew();
        try
        {
            var tcp = server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
            string unix = server.ListenUnix(scratch.File("nbd.sock"));
            server.AddExport(new ExportDefinition("mem", new MemoryBlockStore(ExportSize)));
            server.AddExport(new ExportDefinition("file", FileBlockStore.Open(filePath, readOnly: false)));
            server.AddExport(new ExportDefinition("tmp", FileBlockStore.CreateTemporary(scratch.Path, ExportSize)));
            server.AddExport(new ExportDefinition("cow", CopyOnWriteBlockStore.WithMemoryOverlay(FileBlockStore.Open(basePath, readOnly: true), ownsBase: true)));
            string[] names = { "mem", "file", "tmp", "cow" };
            heapBefore = ProcessProbe.HeapBytes();

            var stopAt = DateTime.UtcNow + Duration;
            var threads = Enumerable.Range(0, Clients).Select(i => new Thread(() =>
            {
                try
                {
                    RunClient(i, names[i % ExportCount], i / ExportCount, i % 2 == 0 ? tcp : null, unix, stopAt, tally);
                }
                catch (Exception e)
                {
                    lock (failures)
                        failures.Add($"client {i} ({names[i % ExportCount]}): {e.Message}");
                }
            }) { IsBackground = true, Name = $"load-{i}" }).ToList();
            threads.ForEach(t => t.Start());
            while (threads.Any(t => t.IsAlive) && DateTime.UtcNow < stopAt + TimeSpan.FromSeconds(60))
            {
                maxThreads = Math.Max(maxThreads, ProcessProbe.ThreadCount());
                Thread.Sleep(500);
            }
            Assert.True(threads.All(t => t.Join(TimeSpan.FromSeconds(1))), "a load client did not finish in time");
            Assert.True(ProcessProbe.WaitUntil(() => server.ConnectionCount == 0, TimeSpan.FromSeconds(10)));
            heapAfter = ProcessProbe.HeapBytes();
        }
        finally
        {
            await server.StopAsync();
        }

        _output.WriteLine($"LOAD clients={Clients} exports={ExportCount} seconds={clock.Elapsed.TotalSeconds:F1} requests={tally.Requests} " +
            $"writes={tally.Writes} reads={tally.Reads} zeroes={tally.Zeroes} trims={tally.Trims} flushes={tally.Flushes} " +
            $"bytesWritten={tally.BytesWritten} bytesVerified={tally.BytesVerified} failures={failures.Count} " +
            $"heapKiB={heapBefore / 1024}->{heapAfter / 1024} maxThreads={maxThreads}");
        Assert.Empty(failures);
        Assert.Empty(log.Errors);
        Assert.True(tally.BytesVerified > 0);
        Assert.True(heapAfter <= heapBefore + HeapSlack, $"managed heap grew from {heapBefore} to {heapAfter} bytes");
    }

    /// <summary>One client: its own slice, its own shadow, random operations until the time is up.</summary>
    private static void RunClient(int id, string export, int sliceIndex, IPEndPoint? tcp, string unix, DateTime stopAt, Tally tally)
    {
        var rng = new Random(Seed * 1000 + id);
        bool structured = (id / 2) % 2 == 0;
        using var c = tcp != null ? RawNbdClient.Connect(tcp) : RawNbdClient.ConnectUnix(unix);
        var (size, flags) = c.Go(export, structured);
        Assert.Equal((ulong)ExportSize, size);
        long sliceStart = (long)sliceIndex * SliceSize;
        ulong cookie = 0;

        // The slice's starting content is whatever the export holds (zeroes, or the copy-on-write base).
        var shadow = new byte[SliceSize];
        var known = new bool[SliceSize / Sector];
        for (int at = 0; at < SliceSize; at += 65536)
        {
            c.SendRequest(NbdCommand.Read, (ulong)(sliceStart + at), 65536, ++cookie);
            var r = c.ReadRead(structured, (ulong)(sliceStart + at), 65536);
            Expect(NbdError.None, cookie, r.Error, r.Cookie, "initial read");
            r.Data.CopyTo(shadow, at);
        }
        Array.Fill(known, true);

        long requests = 0, writes = 0, reads = 0, zeroes = 0, trims = 0, flushes = 0, written = 0, verified = 0;
        var payload = new byte[65536];
        while (DateTime.UtcNow < stopAt)
        {
            int sectors = rng.Next(1, 129);
            int len = sectors * Sector;
            int at = rng.Next(0, SliceSize / Sector - sectors + 1) * Sector;
            ulong offset = (ulong)(sliceStart + at);
            int op = rng.Next(100);
            requests++;
            if (op < 40)
            {
                rng.NextBytes(payload.AsSpan(0, len));
                var fua = rng.Next(5) == 0 ? NbdCommandFlags.Fua : NbdCommandFlags.None;
                c.SendRequest(NbdCommand.Write, offset, (uint)len, ++cookie, fua, payload.AsSpan(0, len));
                var w = c.ReadSimpleReply();
                Expect(NbdError.None, cookie, w.Error, w.Cookie, "write");
                payload.AsSpan(0, len).CopyTo(shadow.AsSpan(at));
                known.AsSpan(at / Sector, sectors).Fill(true);
                writes++;
                written += len;
            }
            else if (op < 48 && flags.HasFlag(TransmissionFlags.SendWriteZeroes))
            {
                var zflags = rng.Next(2) == 0 ? NbdCommandFlags.NoHole : NbdCommandFlags.None;
                c.SendRequest(NbdCommand.WriteZeroes, offset, (uint)len, ++cookie, zflags);
                var z = c.ReadSimpleReply();
                Expect(NbdError.None, cookie, z.Error, z.Cookie, "write-zeroes");
                shadow.AsSpan(at, len).Clear();
                known.AsSpan(at / Sector, sectors).Fill(true);
                zeroes++;
            }
            else if (op < 52 && flags.HasFlag(TransmissionFlags.SendTrim))
            {
                c.SendRequest(NbdCommand.Trim, offset, (uint)len, ++cookie);
                var t = c.ReadSimpleReply();
                Expect(NbdError.None, cookie, t.Error, t.Cookie, "trim");
                known.AsSpan(at / Sector, sectors).Fill(false); // trimmed content is unspecified until rewritten
                trims++;
            }
            else if (op < 56)
            {
                c.SendRequest(NbdCommand.Flush, 0, 0, ++cookie);
                var f = c.ReadSimpleReply();
                Expect(NbdError.None, cookie, f.Error, f.Cookie, "flush");
                flushes++;
            }
            else
            {
                c.SendRequest(NbdCommand.Read, offset, (uint)len, ++cookie);
                var r = c.ReadRead(structured, offset, len);
                Expect(NbdError.None, cookie, r.Error, r.Cookie, "read");
                for (int s = 0; s < sectors; s++)
                {
                    if (!known[at / Sector + s])
                        continue;
                    if (!r.Data.AsSpan(s * Sector, Sector).SequenceEqual(shadow.AsSpan(at + s * Sector, Sector)))
                        throw new InvalidDataException($"wrong bytes at export offset {(long)offset + s * Sector} (sector {s} of a {len}-byte read)");
                    verified += Sector;
                }
                reads++;
            }
        }
        c.SendRequest(NbdCommand.Disconnect, 0, 0, ++cookie);
        c.WaitForClose();

        Interlocked.Add(ref tally.Requests, requests);
        Interlocked.Add(ref tally.Writes, writes);
        Interlocked.Add(ref tally.Reads, reads);
        Interlocked.Add(ref tally.Zeroes, zeroes);
        Interlocked.Add(ref tally.Trims, trims);
        Interlocked.Add(ref tally.Flushes, flushes);
        Interlocked.Add(ref tally.BytesWritten, written);
        Interlocked.Add(ref tally.BytesVerified, verified);
    }

    private static void Expect(NbdError expected, ulong cookie, NbdError error, ulong replyCookie, string what)
    {
        if (error != expected || replyCookie != cookie)
            throw new InvalidDataException($"{what}: reply {error} for cookie {replyCookie}, expected {expected} for {cookie}");
    }
}
