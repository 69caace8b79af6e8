using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Server;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

/// <summary>
/// The reader under every connection: a payload read into several destinations (a write's chunks) arrives
/// whole and in order however the bytes are cut into receives, and what follows it (the next request) is
/// read next, through the socket's vectored receive and through a transport that reads one span at a time.
/// </summary>
public class BufferedReaderTests
{
    private const int Header = 28;

    public static TheoryData<bool> Scatter => new() { true, false };

    public static TheoryData<bool, bool> ScatterAndHeaderAtATime => new() { { true, false }, { false, false }, { true, true }, { false, true } };

    [Theory]
    [MemberData(nameof(ScatterAndHeaderAtATime))]
    public void A_payload_cut_into_random_pieces_fills_every_vector_and_the_next_header_follows(bool zeroCopy, bool headerAtATime)
    {
        var random = new Random(7);
        foreach (int payload in new[] { 1, 4096, 65_536 - Header, 65_536, 200_000, 1 << 20 })
        {
            var stream = RandomBytes(random, Header + payload + Header);
            var transport = new StreamTransport(stream, zeroCopy, random);
            var reader = new BufferedReader(transport) { HeaderAtATime = headerAtATime };
            var header = new byte[Header];
            Assert.True(reader.TryReadExactly(header));
            Assert.Equal(stream.AsSpan(0, Header).ToArray(), header);

            // Destinations of uneven sizes, as a write that starts inside a chunk and ends inside another.
            var sizes = Split(random, payload);
            var arrays = sizes.Select(n => GC.AllocateArray<byte>(n, pinned: true)).ToArray();
            ReadInto(reader, arrays);
            Assert.Equal(stream.AsSpan(Header, payload).ToArray(), arrays.SelectMany(a => a).ToArray());

            Assert.True(reader.TryReadExactly(header));
            Assert.Equal(stream.AsSpan(Header + payload, Header).ToArray(), header);
            Assert.False(reader.TryReadExactly(header));
        }
    }

    [Fact]
    public async Task The_socket_receives_a_payload_into_several_vectors_and_keeps_what_follows()
    {
        var (server, client) = TransmissionTests.SocketPair();
        using var transport = new SocketTransport(server);
        using var peer = client;
        var random = new Random(11);
        const int payload = (1 << 20) + 123;
        var stream = RandomBytes(random, Header + payload + Header);
        // The peer sends in pieces with pauses, so receives return part of a vector, several vectors and the
        // next header together, and wait on an empty socket.
        var sender = Task.Run(async () =>
        {
            int at = 0;
            while (at < stream.Length)
            {
                int n = Math.Min(stream.Length - at, random.Next(1, 300_000));
                peer.Send(stream.AsSpan(at, n));
                at += n;
                await Task.Delay(random.Next(0, 3));
            }
            peer.Shutdown(SocketShutdown.Send);
        });
        var reader = new BufferedReader(transport);
        var header = new byte[Header];
        Assert.True(reader.TryReadExactly(header));
        var destination = new byte[payload];
        var sizes = Split(new Random(3), payload);
        int offset = 0;
        var arrays = sizes.Select(n => GC.AllocateArray<byte>(n, pinned: true)).ToArray();
        ReadInto(reader, arrays);
        foreach (var a in arrays)
        {
            a.CopyTo(destination, offset);
            offset += a.Length;
        }
        Assert.Equal(stream.AsSpan(Header, payload).ToArray(), destination);
        Assert.True(reader.TryReadExactly(header));
        Assert.Equal(stream.AsSpan(Header + payload, Header).ToArray(), header);
        await sender.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(reader.TryReadExactly(header));
        Assert.Equal(stream.Length, transport.BytesReceived);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Header_at_a_time_receives_only_headers_into_the_buffer_so_no_payload_is_copied(bool headerAtATime)
    {
        // Three 128 KiB writes and a last header, as the kernel sends them; the transport fills whatever it is asked for.
        const int payload = 128 * 1024, requests = 3;
        var stream = RandomBytes(new Random(13), requests * (Header + payload) + Header);
        var transport = new StreamTransport(stream, zeroCopy: true);
        var reader = new BufferedReader(transport) { HeaderAtATime = headerAtATime };
        var header = new byte[Header];
        for (int i = 0; i < requests; i++)
        {
            int at = i * (Header + payload);
            Assert.True(reader.TryReadExactly(header));
            Assert.Equal(stream.AsSpan(at, Header).ToArray(), header);
            var data = GC.AllocateArray<byte>(payload, pinned: true);
            ReadInto(reader, [data]);
            Assert.Equal(stream.AsSpan(at + Header, payload).ToArray(), data);
        }
        Assert.True(reader.TryReadExactly(header));
        Assert.Equal(stream.AsSpan(stream.Length - Header).ToArray(), header);
        Assert.False(reader.TryReadExactly(header));
        // Whatever went through the reader's own buffer beyond the headers was payload it had to copy out.
        if (headerAtATime)
            Assert.Equal((requests + 1) * Header, transport.IntoBuffer);
        else
            Assert.True(transport.IntoBuffer > (requests + 1) * Header, $"only {transport.IntoBuffer} bytes went through the buffer");
    }

    [Theory]
    [MemberData(nameof(Scatter))]
    public void A_refused_large_write_is_drained_a_buffer_at_a_time_not_a_header_at_a_time(bool zeroCopy)
    {
        const int payload = 1 << 20;
        var stream = RandomBytes(new Random(19), Header + payload + Header);
        var transport = new StreamTransport(stream, zeroCopy);
        var reader = new BufferedReader(transport) { HeaderAtATime = true };
        var header = new byte[Header];
        Assert.True(reader.TryReadExactly(header));
        reader.Skip(payload);
        Assert.True(reader.TryReadExactly(header));
        Assert.Equal(stream.AsSpan(Header + payload).ToArray(), header);
        Assert.InRange(transport.Receives, 1, 2 + payload / (64 * 1024) + 1);
    }

    [Fact]
    public void A_stream_that_ends_inside_a_payload_is_an_error()
    {
        var stream = RandomBytes(new Random(5), Header + 1000);
        var reader = new BufferedReader(new StreamTransport(stream, zeroCopy: true, new Random(5)));
        Assert.True(reader.TryReadExactly(new byte[Header]));
        var arrays = new[] { GC.AllocateArray<byte>(600, pinned: true), GC.AllocateArray<byte>(4096, pinned: true) };
        Assert.Throws<EndOfStreamException>(() => ReadInto(reader, arrays));
    }

    private static unsafe void ReadInto(BufferedReader reader, byte[][] arrays)
    {
        var vectors = stackalloc Libc.IoVec[arrays.Length];
        for (int i = 0; i < arrays.Length; i++)
            vectors[i] = new Libc.IoVec { Base = (nint)Unsafe(arrays[i]), Length = (nuint)arrays[i].Length };
        reader.ReadExactly(vectors, arrays.Length);
    }

    private static unsafe byte* Unsafe(byte[] pinned) =>
        (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>Cuts <paramref name="total"/> into 1 to 100 parts of uneven sizes (all at least one byte).</summary>
    private static int[] Split(Random random, int total)
    {
        int parts = Math.Min(total, random.Next(1, 100));
        var cuts = Enumerable.Range(0, parts - 1).Select(_ => random.Next(1, total)).Distinct().Order().ToList();
        var sizes = new List<int>();
        int last = 0;
        foreach (int cut in cuts)
        {
            sizes.Add(cut - last);
            last = cut;
        }
        sizes.Add(total - last);
        return sizes.ToArray();
    }

    /// <summary>
    /// Hands out a byte stream: with <paramref name="random"/>, in random-sized pieces one span at a time (the
    /// default vectored read); without, as a socket with the whole stream waiting, every receive filled as far as
    /// asked. Counts receives and the bytes that land in the reader's own buffer (a plain read, or the last of a
    /// vectored read's vectors).
    /// </summary>
    private sealed class StreamTransport(byte[] stream, bool zeroCopy, Random? random = null) : NbdTransport
    {
        private int _at;

        public int IntoBuffer { get; private set; }
        public int Receives { get; private set; }
        public override EndPoint? RemoteEndPoint => null;
        public override bool ZeroCopy => zeroCopy;
        public override long BytesReceived => _at;

        public override int Read(Span<byte> buffer)
        {
            Receives++;
            int n = Take(buffer);
            IntoBuffer += n;
            return n;
        }

        public override unsafe int ReadVectors(Libc.IoVec* vectors, int count)
        {
            if (random != null)
                return base.ReadVectors(vectors, count);
            Receives++;
            int total = 0;
            for (int i = 0; i < count; i++)
            {
                int n = Take(new Span<byte>((void*)vectors[i].Base, (int)vectors[i].Length));
                if (i == count - 1)
                    IntoBuffer += n;
                total += n;
            }
            return total;
        }

        private int Take(Span<byte> buffer)
        {
            int n = Math.Min(buffer.Length, stream.Length - _at);
            if (random != null)
                n = Math.Min(n, random.Next(1, 70_000));
            stream.AsSpan(_at, n).CopyTo(buffer);
            _at += n;
            return n;
        }

        public override void Write(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body) => throw new NotSupportedException();
        public override void Shutdown() { }
        public override void ShutdownSend() { }
        public override void DrainUntilClosed(TimeSpan timeout) { }
        public override void Dispose() { }
    }
}
