using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// A connection in the transmission phase, negotiated with simple replies unless asked otherwise. Offers a small
/// sequential I/O API (for tests and export checks) or hands its Socket over, e.g. to the kernel via
/// <see cref="DetachSocket"/>, or to <see cref="NbdBlockClient"/> for pipelined I/O.
/// Over TLS the bytes go through an SslStream, so the socket alone is useless: <see cref="DetachTransport"/>
/// hands over both (the kernel attach then relays them).
/// </summary>
public sealed class NbdNegotiatedConnection : IDisposable, IAsyncDisposable
{
    /// <summary>Requests above this are split: 32 MiB is the payload every server must accept.</summary>
    private const int MaxChunk = 32 * 1024 * 1024;

    private readonly SemaphoreSlim _gate = new(1, 1);
    private Socket? _socket;
    private Stream? _stream;
    private ulong _cookie;

    public NbdUri Uri { get; }
    public NbdExportInfo Export { get; }
    public string ExportName => Export.Name;
    public long Size => Export.Size ?? 0;
    public TransmissionFlags Flags => Export.Flags ?? TransmissionFlags.None;
    public bool IsReadOnly => Flags.HasFlag(TransmissionFlags.ReadOnly);
    public bool CanMultiConn => Flags.HasFlag(TransmissionFlags.CanMultiConn);
    /// <summary>True when the server did not know GO and the old EXPORT_NAME path was used (no block sizes, no description).</summary>
    public bool UsedExportNameFallback { get; }

    /// <summary>The connected socket; null once detached or disposed.</summary>
    public Socket? Socket => _socket;

    /// <summary>True when the connection runs over TLS (STARTTLS was negotiated); <see cref="Uri"/> is then nbds://.</summary>
    public bool IsTls { get; }

    /// <summary>True when structured replies were negotiated (<see cref="NbdClientOptions.StructuredReplies"/>); such a connection
    /// is for <see cref="NbdBlockClient"/> only: neither the kernel nor the sequential I/O here understand its replies.</summary>
    public bool StructuredReplies { get; }

    /// <summary>Meta contexts the server selected (name to the id its BLOCK_STATUS chunks carry); empty unless asked for.</summary>
    public IReadOnlyDictionary<string, uint> MetaContexts { get; }

    internal NbdNegotiatedConnection(Socket socket, Stream stream, NbdUri uri, NbdExportInfo export, bool usedFallback,
        bool structuredReplies = false, IReadOnlyDictionary<string, uint>? metaContexts = null)
    {
        StructuredReplies = structuredReplies;
        MetaContexts = metaContexts ?? new Dictionary<string, uint>();
        _socket = socket;
        _stream = stream;
        IsTls = stream is SslStream;
        Uri = uri;
        Export = export;
        UsedExportNameFallback = usedFallback;
    }

    /// <summary>Takes the socket away from this object (which can then do no I/O); the caller owns it. Not for TLS connections.</summary>
    public Socket DetachSocket()
    {
        if (IsTls)
            throw new InvalidOperationException("This connection runs over TLS: its socket carries TLS records, so take the stream as well with DetachTransport.");
        return DetachTransport().Socket;
    }

    /// <summary>
    /// Takes the socket and the stream to talk over (the SslStream for TLS, else a NetworkStream that does not own
    /// the socket) away from this object; the caller owns both.
    /// </summary>
    public (Socket Socket, Stream Stream) DetachTransport()
    {
        _gate.Wait();
        try
        {
            var socket = _socket ?? throw new ObjectDisposedException(nameof(NbdNegotiatedConnection), "The socket was already detached or closed.");
            var stream = _stream!;
            _socket = null;
            _stream = null;
            return (socket, stream);
        }
        finally { _gate.Release(); }
    }

    public async Task<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = Math.Min(buffer.Length - done, ChunkLimit);
            await RequestAsync(NbdCommand.Read, NbdCommandFlags.None, offset + done, (uint)n, default, buffer.Slice(done, n), ct).ConfigureAwait(false);
            done += n;
        }
        return done;
    }

    public async Task WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken ct = default)
    {
        var flags = fua ? NbdCommandFlags.Fua : NbdCommandFlags.None;
        int done = 0;
        while (done < data.Length)
        {
            int n = Math.Min(data.Length - done, ChunkLimit);
            await RequestAsync(NbdCommand.Write, flags, offset + done, (uint)n, data.Slice(done, n), default, ct).ConfigureAwait(false);
            done += n;
        }
    }

    public Task FlushAsync(CancellationToken ct = default) =>
        RequestAsync(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default, ct);

    public Task TrimAsync(long offset, uint length, CancellationToken ct = default) =>
        RequestAsync(NbdCommand.Trim, NbdCommandFlags.None, offset, length, default, default, ct);

    public Task WriteZeroesAsync(long offset, uint length, bool noHole = false, CancellationToken ct = default) =>
        RequestAsync(NbdCommand.WriteZeroes, noHole ? NbdCommandFlags.NoHole : NbdCommandFlags.None, offset, length, default, default, ct);

    private int ChunkLimit => Export.MaximumBlockSize is int max and > 0 ? Math.Min(max, MaxChunk) : MaxChunk;

    private async Task RequestAsync(NbdCommand command, NbdCommandFlags flags, long offset, uint length,
        ReadOnlyMemory<byte> payload, Memory<byte> readInto, CancellationToken ct)
    {
        RequireAdvertised(command);
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var stream = _stream ?? throw new ObjectDisposedException(nameof(NbdNegotiatedConnection), "The connection was detached or closed.");
            ulong cookie = ++_cookie;
            var header = new byte[NbdLimits.RequestHeaderSize];
            BinaryPrimitives.WriteUInt32BigEndian(header, NbdMagic.Request);
            BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), (ushort)flags);
            BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), (ushort)command);
            BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
            BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);
            try
            {
                await stream.WriteAsync(header, ct).ConfigureAwait(false);
                if (!payload.IsEmpty) await stream.WriteAsync(payload, ct).ConfigureAwait(false);
                await stream.FlushAsync(ct).ConfigureAwait(false);
                var reply = new byte[NbdLimits.SimpleReplyHeaderSize];
                await stream.ReadExactlyAsync(reply, ct).ConfigureAwait(false);
                uint magic = BinaryPrimitives.ReadUInt32BigEndian(reply);
                if (magic != NbdMagic.SimpleReply)
                    throw Broken(new NbdProtocolException($"{Uri} sent reply magic 0x{magic:x8}; only simple replies were negotiated."));
                ulong echoed = BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8));
                if (echoed != cookie)
                    throw Broken(new NbdProtocolException($"{Uri} answered cookie {echoed} while {cookie} was the only request in flight."));
                var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
                if (error != NbdError.None)
                    throw new NbdCommandException(command, error, $"{command} of {length} bytes at offset {offset} on {Uri} failed: {error} ({(int)error}).");
                if (command == NbdCommand.Read) await stream.ReadExactlyAsync(readInto, ct).ConfigureAwait(false);
            }
            catch (EndOfStreamException e) { throw Broken(new NbdConnectionException($"{Uri} closed the connection during {command}.", e)); }
            catch (IOException e) { throw Broken(new NbdConnectionException($"Lost the connection to {Uri} during {command}: {e.Message}", e)); }
            catch (OperationCanceledException) { Broken(null); throw; } // a half-sent request leaves the stream out of sync
        }
        finally { _gate.Release(); }
    }

    private void RequireAdvertised(NbdCommand command)
    {
        if (StructuredReplies)
            throw new InvalidOperationException("This connection negotiated structured replies; do I/O on it through NbdBlockClient.");
        var needed = command switch
        {
            NbdCommand.Flush => TransmissionFlags.SendFlush,
            NbdCommand.Trim => TransmissionFlags.SendTrim,
            NbdCommand.WriteZeroes => TransmissionFlags.SendWriteZeroes,
            _ => TransmissionFlags.None,
        };
        if (needed != TransmissionFlags.None && !Flags.HasFlag(needed))
            throw new NotSupportedException($"{Uri} does not advertise {command} ({needed} is not set).");
        if (IsReadOnly && command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes)
            throw new InvalidOperationException($"{Uri} is read-only; {command} is not allowed.");
    }

    private Exception Broken(Exception? e)
    {
        CloseSocket();
        return e!;
    }

    /// <summary>Sends NBD_CMD_DISC (no reply) and closes the socket.</summary>
    public async Task DisconnectAsync(CancellationToken ct = default)
    {
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_stream is { } stream)
            {
                var header = new byte[NbdLimits.RequestHeaderSize];
                BinaryPrimitives.WriteUInt32BigEndian(header, NbdMagic.Request);
                BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), (ushort)NbdCommand.Disconnect);
                BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), ++_cookie);
                try
                {
                    await stream.WriteAsync(header, ct).ConfigureAwait(false);
                    await stream.FlushAsync(ct).ConfigureAwait(false);
                }
                catch (IOException) { }
            }
            CloseSocket();
        }
        finally { _gate.Release(); }
    }

    private void CloseSocket()
    {
        var stream = Interlocked.Exchange(ref _stream, null);
        try { stream?.Dispose(); } // an SslStream sends close_notify
        catch (Exception e) when (e is IOException or ObjectDisposedException) { }
        var s = Interlocked.Exchange(ref _socket, null);
        s?.Dispose();
    }

    public void Dispose() => CloseSocket();

    public async ValueTask DisposeAsync()
    {
        if (_socket is not null)
        {
            try { await DisconnectAsync().ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
        }
        CloseSocket();
    }
}
