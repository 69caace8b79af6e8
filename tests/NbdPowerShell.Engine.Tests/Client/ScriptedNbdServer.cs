using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>
/// A minimal NBD server whose transmission phase is a test script, to send what real servers rarely do on cue:
/// replies in reverse order, reads split into several chunks, error chunks, block status with extra contexts,
/// stray cookies. It negotiates fixed newstyle (structured replies and base:allocation as context 7 when
/// <paramref name="structured"/>), then hands every accepted connection to the script.
/// </summary>
internal sealed class ScriptedNbdServer : IDisposable
{
    public const uint AllocationContext = 7;

    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _accepted = new();
    private readonly List<Task> _sessions = new();

    public ScriptedNbdServer(long size, TransmissionFlags flags, bool structured, Func<ScriptedSession, Task> script)
    {
        _listener.Start();
        _ = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                Socket s;
                try { s = await _listener.AcceptSocketAsync(_stop.Token); }
                catch (Exception) { return; }
                lock (_accepted) _accepted.Add(s);
                var session = new ScriptedSession(s);
                lock (_sessions)
                    _sessions.Add(Task.Run(async () =>
                    {
                        try
                        {
                            if (await session.NegotiateAsync(size, flags, structured))
                                await script(session);
                        }
                        catch (Exception e) { session.Failure = e; }
                    }));
            }
        });
    }

    public NbdUri Uri => NbdUri.ForTcp("127.0.0.1", ((IPEndPoint)_listener.LocalEndpoint).Port, "x");

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        lock (_accepted) foreach (var s in _accepted) s.Dispose();
    }
}

internal sealed record ScriptedRequest(NbdCommandFlags Flags, NbdCommand Command, ulong Cookie, ulong Offset, uint Length, byte[] Payload);

internal sealed class ScriptedSession
{
    private readonly Socket _socket;

    public ScriptedSession(Socket socket) => _socket = socket;

    public Exception? Failure { get; set; }

    public bool StructuredReplies { get; private set; }

    public async Task<bool> NegotiateAsync(long size, TransmissionFlags flags, bool structured)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, NbdMagic.Init);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), (ushort)(ServerHandshakeFlags.FixedNewstyle | ServerHandshakeFlags.NoZeroes));
        await SendAsync(hello);
        await ReceiveAsync(4);
        while (true)
        {
            var header = await ReceiveAsync(16);
            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var data = await ReceiveAsync((int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)));
            switch (option)
            {
                case NbdOption.StructuredReply when structured:
                    StructuredReplies = true;
                    await OptionReplyAsync(option, NbdOptionReplyType.Ack, []);
                    break;
                case NbdOption.SetMetaContext when structured:
                    var context = new byte[4 + "base:allocation".Length];
                    BinaryPrimitives.WriteUInt32BigEndian(context, ScriptedNbdServer.AllocationContext);
                    "base:allocation"u8.CopyTo(context.AsSpan(4));
                    await OptionReplyAsync(option, NbdOptionReplyType.MetaContext, context);
                    await OptionReplyAsync(option, NbdOptionReplyType.Ack, []);
                    break;
                case NbdOption.Go:
                    var info = new byte[12];
                    BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfoType.Export);
                    BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)size);
                    BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), (ushort)(flags | TransmissionFlags.HasFlags));
                    await OptionReplyAsync(option, NbdOptionReplyType.Info, info);
                    await OptionReplyAsync(option, NbdOptionReplyType.Ack, []);
                    return true;
                case NbdOption.Abort:
                    return false;
                default:
                    await OptionReplyAsync(option, NbdOptionReplyType.ErrUnsupported, []);
                    break;
            }
        }
    }

    private Task OptionReplyAsync(NbdOption option, NbdOptionReplyType type, byte[] data)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        return SendAsync(reply);
    }

    public async Task<ScriptedRequest> ReadRequestAsync()
    {
        var h = await ReceiveAsync(28);
        var command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(24));
        var payload = command == NbdCommand.Write ? await ReceiveAsync((int)length) : [];
        return new ScriptedRequest((NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(4)), command,
            BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)), BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(16)), length, payload);
    }

    public Task SimpleReplyAsync(ulong cookie, NbdError error, byte[]? data = null)
    {
        var reply = new byte[16 + (data?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(reply, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(4), (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(reply.AsSpan(8), cookie);
        data?.CopyTo(reply, 16);
        return SendAsync(reply);
    }

    public Task ChunkAsync(ulong cookie, NbdReplyChunkType type, bool done, byte[] payload)
    {
        var chunk = new byte[20 + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(chunk, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(chunk.AsSpan(4), (ushort)(done ? NbdReplyChunkFlags.Done : NbdReplyChunkFlags.None));
        BinaryPrimitives.WriteUInt16BigEndian(chunk.AsSpan(6), (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(chunk.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt32BigEndian(chunk.AsSpan(16), (uint)payload.Length);
        payload.CopyTo(chunk, 20);
        return SendAsync(chunk);
    }

    public Task DataChunkAsync(ulong cookie, ulong offset, byte[] data, bool done)
    {
        var payload = new byte[8 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(payload, offset);
        data.CopyTo(payload, 8);
        return ChunkAsync(cookie, NbdReplyChunkType.OffsetData, done, payload);
    }

    public Task HoleChunkAsync(ulong cookie, ulong offset, uint size, bool done)
    {
        var payload = new byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(payload, offset);
        BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8), size);
        return ChunkAsync(cookie, NbdReplyChunkType.OffsetHole, done, payload);
    }

    public Task ErrorChunkAsync(ulong cookie, NbdError error, string message)
    {
        var text = System.Text.Encoding.UTF8.GetBytes(message);
        var payload = new byte[6 + text.Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(4), (ushort)text.Length);
        text.CopyTo(payload, 6);
        return ChunkAsync(cookie, NbdReplyChunkType.Error, true, payload);
    }

    public Task BlockStatusAsync(ulong cookie, uint context, bool done, params (uint Length, uint Flags)[] extents)
    {
        var payload = new byte[4 + 8 * extents.Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, context);
        for (int i = 0; i < extents.Length; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4 + 8 * i), extents[i].Length);
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8 + 8 * i), extents[i].Flags);
        }
        return ChunkAsync(cookie, NbdReplyChunkType.BlockStatus, done, payload);
    }

    public void Close() => _socket.Dispose();

    private async Task SendAsync(byte[] data) => await _socket.SendAsync(data, SocketFlags.None);

    private async Task<byte[]> ReceiveAsync(int n)
    {
        var buffer = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = await _socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None);
            if (r == 0) throw new EndOfStreamException("client closed");
            got += r;
        }
        return buffer;
    }
}
