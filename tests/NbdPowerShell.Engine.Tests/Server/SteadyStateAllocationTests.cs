using System.Buffers.Binary;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

/// <summary>
/// The server is designed to allocate nothing per request once warm (pooled requests and buffers,
/// work items queued without closures, vectored sends from pinned spans). This measures it with a
/// client loop that itself allocates nothing.
/// </summary>
/// Process-wide counts move with what else the machine runs (thread start-ups, late tier-1 code), so tools/test.sh
/// runs the Measure=Quiet tests first, before the kernel-test VMs start beside the rest.
[Collection(SerialCollection.Name)]
[Trait("Measure", "Quiet")]
public class SteadyStateAllocationTests
{
    /// <summary>Memory (reads from the chunks, writes into them), and files through pread and through splice.</summary>
    [Theory]
    [InlineData("memory", 4096)]
    [InlineData("file", 4096)]
    [InlineData("file", 128 * 1024)]
    [InlineData("file-spliced", 128 * 1024)]
    public async Task Reads_and_writes_allocate_almost_nothing_per_request_once_warm(string kind, int blockSize)
    {
        await using var server = new TestServer(new NbdServerOptions
        {
            FileReadSplicing = kind == "file-spliced" ? FileReadSplicing.Always : FileReadSplicing.RemotePeers,
        });
        const int size = 16 << 20;
        if (kind == "memory")
        {
            server.Add("m", new MemoryBlockStore(size));
        }
        else
        {
            string path = Path.Combine(server.Directory, "disk.img");
            using (var f = File.Create(path)) f.SetLength(size);
            server.Add("m", FileBlockStore.Open(path, readOnly: false));
        }
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Go("m");
        var socket = c.Socket;
        // A receive timeout makes .NET run sync receives through its async engine, which allocates: measure the server, not that.
        socket.ReceiveTimeout = 0;
        var request = new byte[28 + blockSize];
        var reply = new byte[16 + blockSize];
        int blocks = size / blockSize;

        // Request i: cookie i, block i (wrapping), into the reused request buffer.
        void WriteHeader(NbdCommand command, int i)
        {
            BinaryPrimitives.WriteUInt32BigEndian(request, NbdMagic.Request);
            BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(4), 0);
            BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), (ushort)command);
            BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), (ulong)i);
            BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(16), (ulong)(i % blocks) * (ulong)blockSize);
            BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), (uint)blockSize);
        }

        void Run(int count)
        {
            for (int i = 0; i < count; i++)
            {
                bool write = (i & 1) == 0;
                WriteHeader(write ? NbdCommand.Write : NbdCommand.Read, i);
                SendAll(socket, request.AsSpan(0, write ? request.Length : 28));
                ReceiveAll(socket, reply.AsSpan(0, write ? 16 : reply.Length));
                if (BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)) != 0)
                    throw new InvalidOperationException("request failed");
            }
        }

        // Bursts of pipelined writes: the connection's request workers start on demand, up to WorkerThreads. With one
        // request at a time another starts only when a request arrives before the previous worker is idle again,
        // which on a loaded machine happens at random moments, measured window included, and each start costs a
        // thread plus a payload buffer that the new worker keeps in its ArrayPool thread-local slot (the reader then
        // rents a fresh one). That is a cost per worker, bounded by WorkerThreads, not per request; starting them all
        // here (as ThreadPool.SetMinThreads would) leaves the measurement with what each request costs.
        void Burst(int count)
        {
            for (int i = 0; i < count; i++)
            {
                WriteHeader(NbdCommand.Write, i);
                SendAll(socket, request);
            }
            for (int i = 0; i < count; i++)
            {
                ReceiveAll(socket, reply.AsSpan(0, 16));
                if (BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)) != 0)
                    throw new InvalidOperationException("request failed");
            }
        }

        int workers = new NbdServerOptions().WorkerThreads;
        for (int round = 0; round < 3; round++)
            Burst(4 * workers);
        Run(5000); // warm the pools
        JitWarmup.UntilQuiet(() => Run(2000), TimeSpan.FromSeconds(60)); // and until the JIT is done with this path
        long before = GC.GetTotalAllocatedBytes(precise: true);
        const int measured = 20000;
        Run(measured);
        long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / measured;
        // The whole process is measured (test host included), so allow a little background noise.
        Assert.True(perRequest < 64,  $"{perRequest} bytes allocated per request in steady state");
    }

    private static void SendAll(Socket s, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
            data = data[s.Send(data)..];
    }

    private static void ReceiveAll(Socket s, Span<byte> data)
    {
        while (!data.IsEmpty)
        {
            int n = s.Receive(data);
            if (n == 0)
                throw new EndOfStreamException();
            data = data[n..];
        }
    }
}
