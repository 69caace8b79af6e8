using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using NbdPowerShell.Engine.Protocol;
using Xunit;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// A byte-level NBD client for tests: sends exactly the bytes a test wants (good or bad) and
/// decodes what comes back, so every error path can be provoked precisely.
/// </summary>
internal sealed class RawNbdClient : IDisposable
{
    public sealed record OptionReply(NbdOption Option, NbdOptionReplyType Type, byte[] Data);
    public sealed record Chunk(ushort Flags, NbdReplyChunkType Type, ulong Cookie, byte[] Payload);

    private readonly Socket _socket;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _socket.ReceiveTimeout = (int)ReplyWait.TotalMilliseconds;
    }

    public Socket Socket => _socket;

    public static RawNbdClient Connect(IPEndPoint endPoint)
    {
        var s = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.Connect(endPoint);
        return new RawNbdClient(s);
    }

    public static RawNbdClient Wrap(Socket socket) => new(socket);

    public static RawNbdClient ConnectUnix(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(path));
        return new RawNbdClient(s);
    }

    /// <summary>Reads the 18-byte greeting and answers with the given client flags.</summary>
    public ServerHandshakeFlags Greet(ClientHandshakeFlags flags = ClientHandshakeFlags.FixedNewstyle | ClientHandshakeFlags.NoZeroes)
    {
        var hello = ReadExactly(18);
        Assert.Equal(NbdMagic.Init, BinaryPrimitives.ReadUInt64BigEndian(hello));
        Assert.Equal(NbdMagic.IHaveOpt, BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8)));
        var serverFlags = (ServerHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(16));
        SendUInt32((uint)flags);
        return serverFlags;
    }

    public void SendOption(NbdOption option, ReadOnlySpan<byte> data, uint? lengthOverride = null, ulong magic = NbdMagic.IHaveOpt)
    {
        var buf = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buf, magic);
        BinaryPrimitives.WriteUInt32BigEndian(buf.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(buf.AsSpan(12), lengthOverride ?? (uint)data.Length);
        data.CopyTo(buf.AsSpan(16));
        Send(buf);
    }

    public OptionReply ReadOptionReply()
    {
        var h = ReadExactly(20);
        Assert.Equal(NbdMagic.OptionReply, BinaryPrimitives.ReadUInt64BigEndian(h));
        var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8));
        var type = (NbdOptionReplyType)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        uint len = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        Assert.True(len < 4096, $"option reply payload of {len} bytes would desync nbd-client");
        return new OptionReply(option, type, ReadExactly((int)len));
    }

    /// <summary>Reads replies up to and including the final ACK or error.</summary>
    public List<OptionReply> ReadOptionReplies()
    {
        var replies = new List<OptionReply>();
        while (true)
        {
            var r = ReadOptionReply();
            replies.Add(r);
            if (r.Type == NbdOptionReplyType.Ack || r.Type.IsError())
                return replies;
        }
    }

    public static byte[] InfoData(string name, params NbdInfoType[] requests)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var data = new byte[4 + nameBytes.Length + 2 + 2 * requests.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes.Length);
        nameBytes.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + nameBytes.Length), (ushort)requests.Length);
        for (int i = 0; i < requests.Length; i++)
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + nameBytes.Length + 2 * i), (ushort)requests[i]);
        return data;
    }

    public static byte[] MetaContextData(string export, params string[] queries)
    {
        var ms = new MemoryStream();
        void U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); ms.Write(b); }
        var e = Encoding.UTF8.GetBytes(export);
        U32((uint)e.Length); ms.Write(e);
        U32((uint)queries.Length);
        foreach (var q in queries) { var qb = Encoding.UTF8.GetBytes(q); U32((uint)qb.Length); ms.Write(qb); }
        return ms.ToArray();
    }

    /// <summary>Full GO negotiation; returns (size, flags).</summary>
    public (ulong Size, TransmissionFlags Flags) Go(string name, bool structured = false, bool baseAllocation = false)
    {
        Greet();
        if (structured)
        {
            SendOption(NbdOption.StructuredReply, default);
            Assert.Equal(NbdOptionReplyType.Ack, ReadOptionReply().Type);
        }
        if (baseAllocation)
        {
            SendOption(NbdOption.SetMetaContext, MetaContextData(name, NbdMetaContext.BaseAllocation));
            var replies = ReadOptionReplies();
            Assert.Equal(NbdOptionReplyType.MetaContext, replies[0].Type);
            Assert.Equal(NbdOptionReplyType.Ack, replies[^1].Type);
        }
        SendOption(NbdOption.Go, InfoData(name));
        var all = ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.Ack, all[^1].Type);
        var export = all.First(r => r.Type == NbdOptionReplyType.Info && BinaryPrimitives.ReadUInt16BigEndian(r.Data) == 0);
        return (BinaryPrimitives.ReadUInt64BigEndian(export.Data.AsSpan(2)),
                (TransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(export.Data.AsSpan(10)));
    }

    public void SendRequest(NbdCommand command, ulong offset, uint length, ulong cookie = 1,
        NbdCommandFlags flags = NbdCommandFlags.None, ReadOnlySpan<byte> payload = default, uint magic = NbdMagic.Request)
    {
        var buf = new byte[28 + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(buf, magic);
        BinaryPrimitives.WriteUInt16BigEndian(buf.AsSpan(4), (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(buf.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(buf.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(buf.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(buf.AsSpan(24), length);
        payload.CopyTo(buf.AsSpan(28));
        Send(buf);
    }

    /// <summary>Reads a simple reply; data is read only for a successful reply when <paramref name="dataLength"/> is given.</summary>
    public (NbdError Error, ulong Cookie, byte[] Data) ReadSimpleReply(int dataLength = 0)
    {
        var h = ReadExactly(16);
        Assert.Equal(NbdMagic.SimpleReply, BinaryPrimitives.ReadUInt32BigEndian(h));
        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4));
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8));
        var data = error == NbdError.None && dataLength > 0 ? ReadExactly(dataLength) : Array.Empty<byte>();
        return (error, cookie, data);
    }

    /// <summary>Reads one reply of either kind: a simple reply comes back as a chunk of type None with the error in the payload.</summary>
    public Chunk ReadChunk()
    {
        var magic = ReadExactly(4);
        uint m = BinaryPrimitives.ReadUInt32BigEndian(magic);
        if (m == NbdMagic.SimpleReply)
        {
            var rest = ReadExactly(12);
            return new Chunk(1, NbdReplyChunkType.None, BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4)), rest.AsSpan(0, 4).ToArray());
        }
        Assert.Equal(NbdMagic.StructuredReply, m);
        var h = ReadExactly(16);
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(h);
        var type = (NbdReplyChunkType)BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(2));
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(4));
        uint len = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        return new Chunk(flags, type, cookie, ReadExactly((int)len));
    }

    /// <summary>True if the server closed the connection (reads hit EOF) within the timeout.</summary>
    /// <summary>
    /// How long a read waits for the server. Only a server that never answers runs into it, so it is long: on a
    /// loaded machine (CI beside other builds, stress-ng) a correct server can take seconds to be scheduled.
    /// </summary>
    public static readonly TimeSpan ReplyWait = TimeSpan.FromSeconds(60);

    public bool WaitForClose() => WaitForClose((int)ReplyWait.TotalMilliseconds);

    public bool WaitForClose(int timeoutMs)
    {
        _socket.ReceiveTimeout = timeoutMs;
        var buf = new byte[4096];
        try
        {
            while (true)
            {
                int n = _socket.Receive(buf);
                if (n == 0)
                    return true;
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
        {
            return false;
        }
    }

    public void SendUInt32(uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        Send(b);
    }

    public void Send(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
            data = data[_socket.Send(data)..];
    }

    public byte[] ReadExactly(int count)
    {
        var buf = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n = _socket.Receive(buf, got, count - got, SocketFlags.None);
            if (n == 0)
                throw new EndOfStreamException($"server closed the connection after {got} of {count} bytes");
            got += n;
        }
        return buf;
    }

    public void Dispose() => _socket.Dispose();
}
