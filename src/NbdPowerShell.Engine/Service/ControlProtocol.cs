using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// The control socket's wire format. Every message is one frame: a 12-byte header (magic "NBPS", u16 protocol
/// version, u16 flags = 0, u32 payload length, all big-endian) and a UTF-8 JSON payload of at most
/// <see cref="MaxPayload"/> bytes. A request is <c>{"id":n,"type":"exports.start","body":{...}}</c>; its reply is
/// <c>{"id":n,"ok":true,"body":{...}}</c> or <c>{"id":n,"ok":false,"error":{"id":"NbdExportBusy","message":"..."}}</c>,
/// where the error id is one of <see cref="Hosting.ErrorIds"/>. The message types live in one file per family
/// (Messages/ServiceMessages.cs, ExportMessages.cs, DeviceMessages.cs).
/// </summary>
public static class ControlProtocol
{
    public const uint Magic = 0x4E425053; // "NBPS"
    public const ushort Version = 1;
    public const int HeaderSize = 12;
    public const int MaxPayload = 1 << 20;

    /// <summary>camelCase, enums as names, nulls left out; the same for both ends.</summary>
    public static JsonSerializerOptions Json { get; } = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter() },
    };

    /// <summary>Reads one frame. Returns null at a clean end of stream before a header; throws <see cref="ControlProtocolException"/> for a bad frame.</summary>
    /// <param name="idle">How long to wait for the first byte of the header.</param>
    /// <param name="frame">How long the rest of the frame may take once it started.</param>
    public static async Task<byte[]?> ReadFrameAsync(Socket socket, TimeSpan idle, TimeSpan frame, CancellationToken cancellationToken)
    {
        var header = new byte[HeaderSize];
        using (var first = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
        {
            first.CancelAfter(idle);
            int got = await ReceiveSomeAsync(socket, header.AsMemory(0, 1), first.Token, "waiting for a request", cancellationToken).ConfigureAwait(false);
            if (got == 0)
                return null;
        }
        using var rest = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        rest.CancelAfter(frame);
        await ReceiveExactlyAsync(socket, header.AsMemory(1), rest.Token, cancellationToken).ConfigureAwait(false);
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
        ushort version = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        if (magic != Magic)
            throw new ControlProtocolException($"bad magic 0x{magic:x8} (expected 0x{Magic:x8}, \"NBPS\")", resync: false);
        if (version != Version)
            throw new ControlProtocolException($"protocol version {version} is not spoken here (this service speaks {Version}); use a module of the same version as the service", resync: false);
        if (length > MaxPayload)
            throw new ControlProtocolException($"a {length}-byte message is over the {MaxPayload}-byte limit", resync: false);
        var payload = new byte[length];
        await ReceiveExactlyAsync(socket, payload, rest.Token, cancellationToken).ConfigureAwait(false);
        return payload;
    }

    public static async Task WriteFrameAsync(Socket socket, ReadOnlyMemory<byte> payload, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (payload.Length > MaxPayload)
            throw new ControlProtocolException($"a {payload.Length}-byte message is over the {MaxPayload}-byte limit", resync: true);
        var frame = new byte[HeaderSize + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(frame, Magic);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(4), Version);
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(8), (uint)payload.Length);
        payload.CopyTo(frame.AsMemory(HeaderSize));
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            for (int sent = 0; sent < frame.Length;)
                sent += await socket.SendAsync(frame.AsMemory(sent), SocketFlags.None, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"the peer did not take a {frame.Length}-byte message within {timeout.TotalSeconds:0} s");
        }
    }

    private static async Task ReceiveExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken deadline, CancellationToken caller)
    {
        while (buffer.Length > 0)
        {
            int n = await ReceiveSomeAsync(socket, buffer, deadline, "in the middle of a message", caller).ConfigureAwait(false);
            if (n == 0)
                throw new ControlProtocolException("the connection closed in the middle of a message", resync: false);
            buffer = buffer[n..];
        }
    }

    private static async Task<int> ReceiveSomeAsync(Socket socket, Memory<byte> buffer, CancellationToken deadline, string what, CancellationToken caller)
    {
        try
        {
            return await socket.ReceiveAsync(buffer, SocketFlags.None, deadline).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!caller.IsCancellationRequested)
        {
            throw new TimeoutException($"the peer sent nothing for too long {what}");
        }
    }
}

/// <summary>A frame or message the other end should not have sent.</summary>
public sealed class ControlProtocolException(string message, bool resync) : Exception(message)
{
    /// <summary>True when the stream is still in step (a bad JSON payload in a good frame); false when the connection must close.</summary>
    public bool CanContinue { get; } = resync;
}

/// <summary>A request: what to do, with its body.</summary>
public sealed record ControlRequest
{
    public long Id { get; init; }
    public string Type { get; init; } = "";
    public JsonElement? Body { get; init; }
}

/// <summary>A reply: a body, or an error with its catalogue id.</summary>
public sealed record ControlReply
{
    public long Id { get; init; }
    public bool Ok { get; init; }
    public JsonElement? Body { get; init; }
    public ControlError? Error { get; init; }
}

public sealed record ControlError(string Id, string Message);
