using System.Buffers.Binary;
using System.Text;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// Client side of fixed newstyle negotiation over one stream. One option at a time; never asks for
/// structured replies, so a connection that ends in GO can be handed to the kernel, which only speaks simple replies.
/// </summary>
internal sealed class NbdNegotiator
{
    /// <summary>Option replies longer than this are a broken or hostile server (LIST entries and INFO are tiny).</summary>
    private const int MaxReplyPayload = 1024 * 1024;

    private Stream _stream;
    private readonly string _peer;

    public ServerHandshakeFlags ServerFlags { get; private set; }
    public bool NoZeroes { get; private set; }
    public bool FixedNewstyle => ServerFlags.HasFlag(ServerHandshakeFlags.FixedNewstyle);

    private NbdNegotiator(Stream stream, string peer)
    {
        _stream = stream;
        _peer = peer;
    }

    /// <summary>Reads the server greeting and answers with the flags we both understand.</summary>
    public static async Task<NbdNegotiator> StartAsync(Stream stream, string peer, CancellationToken ct)
    {
        var n = new NbdNegotiator(stream, peer);
        var hello = new byte[18];
        await n.ReadExactAsync(hello.AsMemory(0, 16), "server greeting", ct).ConfigureAwait(false);
        ulong magic = BinaryPrimitives.ReadUInt64BigEndian(hello);
        ulong second = BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8));
        if (magic != NbdMagic.Init)
            throw new NbdProtocolException($"{peer} is not an NBD server (greeting magic 0x{magic:x16}, expected NBDMAGIC).");
        if (second == NbdMagic.OldStyle)
            throw new NbdProtocolException($"{peer} speaks oldstyle negotiation, which is obsolete and unsupported; configure it for newstyle (e.g. named exports).");
        if (second != NbdMagic.IHaveOpt)
            throw new NbdProtocolException($"{peer} sent an unknown negotiation magic 0x{second:x16}.");
        await n.ReadExactAsync(hello.AsMemory(16, 2), "handshake flags", ct).ConfigureAwait(false);
        n.ServerFlags = (ServerHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(16));

        // Only echo flags the server offered: a server must drop clients that set anything else.
        var client = ClientHandshakeFlags.None;
        if (n.ServerFlags.HasFlag(ServerHandshakeFlags.FixedNewstyle)) client |= ClientHandshakeFlags.FixedNewstyle;
        if (n.ServerFlags.HasFlag(ServerHandshakeFlags.NoZeroes)) client |= ClientHandshakeFlags.NoZeroes;
        n.NoZeroes = client.HasFlag(ClientHandshakeFlags.NoZeroes);
        var reply = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(reply, (uint)client);
        await n.WriteAsync(reply, ct).ConfigureAwait(false);
        return n;
    }

    /// <summary>
    /// NBD_OPT_STARTTLS. Returns after the server's ACK; the caller runs the TLS handshake and then
    /// <see cref="UseStream"/>. A server without TLS (ERR_POLICY, ERR_UNSUP) gives NbdTlsNotSupportedException.
    /// </summary>
    public async Task StartTlsAsync(CancellationToken ct)
    {
        if (!FixedNewstyle)
            throw new NbdTlsNotSupportedException($"{_peer} does not offer TLS: it does not speak fixed newstyle negotiation, which STARTTLS needs.");
        await SendOptionAsync(NbdOption.StartTls, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        var (type, payload) = await ReadReplyAsync(NbdOption.StartTls, ct).ConfigureAwait(false);
        if (type == NbdOptionReplyType.Ack) return;
        string? text = payload.Length > 0 ? Encoding.UTF8.GetString(payload).TrimEnd('\0', '\n') : null;
        string suffix = string.IsNullOrEmpty(text) ? "" : $" Server says: {text}";
        if (type is NbdOptionReplyType.ErrPolicy or NbdOptionReplyType.ErrUnsupported)
            throw new NbdTlsNotSupportedException($"{_peer} does not offer TLS (STARTTLS answered {type}); connect without TLS or enable TLS on the server.{suffix}");
        throw ToException(NbdOption.StartTls, type, payload, "");
    }

    /// <summary>Continues negotiation over another stream (the TLS stream after STARTTLS).</summary>
    public void UseStream(Stream stream)
    {
        _stream = stream;
        _awaitingFirstTlsReply = true;
    }

    /// <summary>
    /// With TLS 1.3 a server refuses a client certificate (or its absence) only after our side of the handshake
    /// finished: the first reply over TLS then never comes. That closure is reported as a handshake failure.
    /// </summary>
    private bool _awaitingFirstTlsReply;

    /// <summary>NBD_OPT_LIST: names and descriptions as the server lists them.</summary>
    public async Task<IReadOnlyList<(string Name, string? Description)>> ListAsync(CancellationToken ct)
    {
        RequireFixed(NbdOption.List);
        await SendOptionAsync(NbdOption.List, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        var result = new List<(string, string?)>();
        while (true)
        {
            var (type, payload) = await ReadReplyAsync(NbdOption.List, ct).ConfigureAwait(false);
            if (type == NbdOptionReplyType.Ack) return result;
            if (type.IsError()) throw ToException(NbdOption.List, type, payload, "");
            if (type != NbdOptionReplyType.Server) continue; // unknown success types are ignorable
            if (payload.Length < 4) throw new NbdProtocolException($"{_peer} sent a malformed LIST entry ({payload.Length} bytes).");
            uint nameLen = BinaryPrimitives.ReadUInt32BigEndian(payload);
            if (nameLen > payload.Length - 4) throw new NbdProtocolException($"{_peer} sent a LIST entry whose name overruns it.");
            string name = Encoding.UTF8.GetString(payload, 4, (int)nameLen);
            string? description = payload.Length > 4 + nameLen ? Encoding.UTF8.GetString(payload, 4 + (int)nameLen, payload.Length - 4 - (int)nameLen) : null;
            result.Add((name, description));
        }
    }

    /// <summary>NBD_OPT_INFO or NBD_OPT_GO. Returns null when the server answers ERR_UNSUP (old server: use EXPORT_NAME).</summary>
    public async Task<NbdExportInfo?> InfoOrGoAsync(NbdOption option, string exportName, bool requestBlockSize, CancellationToken ct)
    {
        if (option is not (NbdOption.Info or NbdOption.Go)) throw new ArgumentOutOfRangeException(nameof(option));
        RequireFixed(option);
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        if (name.Length > NbdLimits.MaxStringLength) throw new ArgumentException($"Export name longer than {NbdLimits.MaxStringLength} bytes.", nameof(exportName));
        var requests = new List<NbdInfoType> { NbdInfoType.Description };
        if (requestBlockSize) requests.Add(NbdInfoType.BlockSize);
        var data = new byte[4 + name.Length + 2 + 2 * requests.Count];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), (ushort)requests.Count);
        for (int i = 0; i < requests.Count; i++)
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length + 2 * i), (ushort)requests[i]);
        await SendOptionAsync(option, data, ct).ConfigureAwait(false);

        long? size = null;
        TransmissionFlags? flags = null;
        string? description = null;
        int? min = null, preferred = null, max = null;
        while (true)
        {
            var (type, payload) = await ReadReplyAsync(option, ct).ConfigureAwait(false);
            if (type == NbdOptionReplyType.Ack)
            {
                if (size is null || flags is null)
                    throw new NbdProtocolException($"{_peer} acknowledged {option} without sending NBD_INFO_EXPORT.");
                return new NbdExportInfo
                {
                    Name = exportName, Description = description, Size = size, Flags = flags,
                    MinimumBlockSize = min, PreferredBlockSize = preferred, MaximumBlockSize = max,
                };
            }
            if (type == NbdOptionReplyType.ErrUnsupported) return null;
            if (type.IsError()) throw ToException(option, type, payload, exportName);
            if (type != NbdOptionReplyType.Info || payload.Length < 2) continue;
            var info = (NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(payload);
            switch (info)
            {
                case NbdInfoType.Export when payload.Length >= 12:
                    ulong raw = BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(2));
                    if (raw > long.MaxValue) throw new NbdProtocolException($"{_peer} reported an impossible export size {raw}.");
                    size = (long)raw;
                    flags = (TransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(10));
                    break;
                case NbdInfoType.Description:
                    description = Encoding.UTF8.GetString(payload, 2, payload.Length - 2);
                    break;
                case NbdInfoType.BlockSize when payload.Length >= 14:
                    min = ClampToInt(BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(2)));
                    preferred = ClampToInt(BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(6)));
                    max = ClampToInt(BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(10)));
                    break;
            }
        }
    }

    /// <summary>
    /// NBD_OPT_STRUCTURED_REPLY. True when the server agreed; false when it refused (ERR_UNSUP, ERR_POLICY, …),
    /// after which negotiation continues with simple replies.
    /// </summary>
    public async Task<bool> StructuredReplyAsync(CancellationToken ct)
    {
        if (!FixedNewstyle) return false;
        await SendOptionAsync(NbdOption.StructuredReply, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        while (true)
        {
            var (type, _) = await ReadReplyAsync(NbdOption.StructuredReply, ct).ConfigureAwait(false);
            if (type == NbdOptionReplyType.Ack) return true;
            if (type.IsError()) return false;
        }
    }

    /// <summary>
    /// NBD_OPT_SET_META_CONTEXT for <paramref name="exportName"/>: the contexts the server selected, by name, with the
    /// ids its BLOCK_STATUS chunks will carry. Contexts the server does not know are simply absent; a server
    /// without the option gives an empty result.
    /// </summary>
    public async Task<IReadOnlyDictionary<string, uint>> SetMetaContextAsync(string exportName, IReadOnlyList<string> contexts, CancellationToken ct)
    {
        RequireFixed(NbdOption.SetMetaContext);
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        var queries = contexts.Select(Encoding.UTF8.GetBytes).ToArray();
        var data = new byte[4 + name.Length + 4 + queries.Sum(q => 4 + q.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        int at = 4 + name.Length;
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)queries.Length);
        at += 4;
        foreach (var q in queries)
        {
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(at), (uint)q.Length);
            q.CopyTo(data, at + 4);
            at += 4 + q.Length;
        }
        await SendOptionAsync(NbdOption.SetMetaContext, data, ct).ConfigureAwait(false);
        var selected = new Dictionary<string, uint>(StringComparer.Ordinal);
        while (true)
        {
            var (type, payload) = await ReadReplyAsync(NbdOption.SetMetaContext, ct).ConfigureAwait(false);
            if (type == NbdOptionReplyType.Ack) return selected;
            if (type.IsError()) return new Dictionary<string, uint>();
            if (type != NbdOptionReplyType.MetaContext) continue;
            if (payload.Length < 5) throw new NbdProtocolException($"{_peer} sent a malformed META_CONTEXT reply ({payload.Length} bytes).");
            selected[Encoding.UTF8.GetString(payload, 4, payload.Length - 4)] = BinaryPrimitives.ReadUInt32BigEndian(payload);
        }
    }

    /// <summary>NBD_OPT_EXPORT_NAME: enters transmission; a failure can only be signalled by hanging up.</summary>
    public async Task<NbdExportInfo> ExportNameAsync(string exportName, CancellationToken ct)
    {
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        await SendOptionAsync(NbdOption.ExportName, name, ct).ConfigureAwait(false);
        var reply = new byte[NoZeroes ? 10 : 134];
        int got = await ReadUpToAsync(reply, ct).ConfigureAwait(false);
        if (got < 10)
            throw new NbdExportNotFoundException(exportName, NbdOption.ExportName, null,
                $"{_peer} closed the connection after EXPORT_NAME '{exportName}': the export does not exist or access was refused.");
        if (got < reply.Length)
            throw new NbdConnectionException($"{_peer} closed the connection during the EXPORT_NAME reply.");
        ulong raw = BinaryPrimitives.ReadUInt64BigEndian(reply);
        if (raw > long.MaxValue) throw new NbdProtocolException($"{_peer} reported an impossible export size {raw}.");
        return new NbdExportInfo
        {
            Name = exportName, Size = (long)raw,
            Flags = (TransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8)),
        };
    }

    /// <summary>NBD_OPT_ABORT: ends negotiation politely. Servers may close without replying, which is fine.</summary>
    public async Task AbortAsync(CancellationToken ct)
    {
        try
        {
            await SendOptionAsync(NbdOption.Abort, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
            if (FixedNewstyle) await ReadReplyAsync(NbdOption.Abort, ct).ConfigureAwait(false);
        }
        catch (NbdClientException) { }
        catch (IOException) { }
    }

    private void RequireFixed(NbdOption option)
    {
        if (!FixedNewstyle)
            throw new NbdProtocolException($"{_peer} does not support fixed newstyle negotiation, so {option} cannot be used.");
    }

    private async Task SendOptionAsync(NbdOption option, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        var buffer = new byte[NbdLimits.OptionHeaderSize + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), (uint)data.Length);
        data.CopyTo(buffer.AsMemory(NbdLimits.OptionHeaderSize));
        await WriteAsync(buffer, ct).ConfigureAwait(false);
    }

    private async Task<(NbdOptionReplyType Type, byte[] Payload)> ReadReplyAsync(NbdOption option, CancellationToken ct)
    {
        var header = new byte[NbdLimits.OptionReplyHeaderSize];
        await ReadExactAsync(header, $"{option} reply", ct).ConfigureAwait(false);
        ulong magic = BinaryPrimitives.ReadUInt64BigEndian(header);
        if (magic != NbdMagic.OptionReply)
            throw new NbdProtocolException($"{_peer} sent a bad option reply magic 0x{magic:x16} to {option}.");
        var echoed = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        if (echoed != option)
            throw new NbdProtocolException($"{_peer} answered option {echoed} while {option} was pending.");
        var type = (NbdOptionReplyType)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (length > MaxReplyPayload)
            throw new NbdProtocolException($"{_peer} sent a {length}-byte reply to {option}, which is absurd.");
        var payload = new byte[length];
        await ReadExactAsync(payload, $"{option} reply payload", ct).ConfigureAwait(false);
        return (type, payload);
    }

    private Exception ToException(NbdOption option, NbdOptionReplyType type, byte[] payload, string exportName)
    {
        string? text = payload.Length > 0 ? Encoding.UTF8.GetString(payload).TrimEnd('\0', '\n') : null;
        string suffix = string.IsNullOrEmpty(text) ? "" : $" Server says: {text}";
        string what = option is NbdOption.List ? "list exports" : $"open export '{exportName}'";
        return type switch
        {
            NbdOptionReplyType.ErrUnknown => new NbdExportNotFoundException(exportName, option, text, $"{_peer} has no export named '{exportName}'.{suffix}"),
            NbdOptionReplyType.ErrPolicy => new NbdPolicyRefusedException(option, text, $"{_peer} refused by policy to {what}.{suffix}"),
            NbdOptionReplyType.ErrTlsRequired => new NbdTlsRequiredException(option, text, $"{_peer} requires TLS to {what}; connect with TLS (-UseTls, or an nbds:// URI).{suffix}"),
            NbdOptionReplyType.ErrShutdown => new NbdServerShutdownException(option, text, $"{_peer} is shutting down.{suffix}"),
            _ => new NbdOptionErrorException(option, type, text, $"{_peer} failed to {what}: {type}.{suffix}"),
        };
    }

    private static int ClampToInt(uint value) => value > int.MaxValue ? int.MaxValue : (int)value;

    private async Task WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        try { await _stream.WriteAsync(data, ct).ConfigureAwait(false); }
        catch (IOException e) { throw new NbdConnectionException($"Lost the connection to {_peer} while negotiating: {e.Message}", e); }
    }

    private async Task ReadExactAsync(Memory<byte> buffer, string what, CancellationToken ct)
    {
        int got;
        try { got = await ReadUpToAsync(buffer, ct).ConfigureAwait(false); }
        catch (NbdConnectionException e) when (_awaitingFirstTlsReply) { throw TlsRefused(e); }
        if (got < buffer.Length)
        {
            if (_awaitingFirstTlsReply) throw TlsRefused(null);
            throw new NbdConnectionException($"{_peer} closed the connection while we waited for the {what}.");
        }
        _awaitingFirstTlsReply = false;
    }

    private NbdTlsHandshakeException TlsRefused(Exception? inner) => new(
        $"{_peer} closed the TLS connection right after the handshake: it most likely refused our client certificate, or requires one " +
        "(mutual TLS). Give a certificate its authority trusts with -ClientCertificate.", inner);

    private async Task<int> ReadUpToAsync(Memory<byte> buffer, CancellationToken ct)
    {
        try { return await _stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, ct).ConfigureAwait(false); }
        catch (IOException e) { throw new NbdConnectionException($"Lost the connection to {_peer} while negotiating: {e.Message}", e); }
    }
}
