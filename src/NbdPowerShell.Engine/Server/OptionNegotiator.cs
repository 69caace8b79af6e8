using System.Buffers.Binary;
using System.Text;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Server side of fixed-newstyle negotiation: one method per option. Every reply keeps its payload
/// under 4 KiB because nbd-client only reads shorter ones.
/// </summary>
internal sealed class OptionNegotiator
{
    private const uint BaseAllocationId = 1;

    private readonly NbdServer _server;
    private readonly ClientConnection _connection;
    // Replaced by their TLS counterparts after STARTTLS.
    private NbdTransport _transport;
    private BufferedReader _reader;
    private bool _tls;
    private readonly ILogger _log;
    private readonly byte[] _header = new byte[NbdLimits.OptionReplyHeaderSize];

    private bool _noZeroes;
    private bool _structuredReplies;
    // SET_META_CONTEXT's selection and the export name it was made for.
    private bool _baseAllocationSelected;
    private string? _metaContextExport;

    /// <summary>The transport in use now: the TLS one once STARTTLS succeeded.</summary>
    public NbdTransport Transport => _transport;

    public OptionNegotiator(NbdServer server, ClientConnection connection, NbdTransport transport, BufferedReader reader, ILogger log)
    {
        _server = server;
        _connection = connection;
        _transport = transport;
        _reader = reader;
        _log = log;
    }

    /// <summary>Runs the handshake. Returns the session to serve, or null when the client aborted or must be dropped.</summary>
    public NegotiatedSession? Run()
    {
        Span<byte> hello = stackalloc byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, NbdMagic.Init);
        BinaryPrimitives.WriteUInt64BigEndian(hello[8..], NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(hello[16..], (ushort)(ServerHandshakeFlags.FixedNewstyle | ServerHandshakeFlags.NoZeroes));
        _transport.Write(hello, default);

        Span<byte> clientFlagBytes = stackalloc byte[4];
        if (!_reader.TryReadExactly(clientFlagBytes))
            return null;
        var clientFlags = (ClientHandshakeFlags)BinaryPrimitives.ReadUInt32BigEndian(clientFlagBytes);
        const ClientHandshakeFlags known = ClientHandshakeFlags.FixedNewstyle | ClientHandshakeFlags.NoZeroes;
        if ((clientFlags & ~known) != 0)
        {
            // The spec requires dropping a client that sets flags we did not offer.
            _log.LogWarning("Client {Client} sent unknown handshake flags 0x{Flags:x}; dropping it", _connection.ClientAddress, (uint)clientFlags);
            return null;
        }
        _noZeroes = clientFlags.HasFlag(ClientHandshakeFlags.NoZeroes);

        Span<byte> header = stackalloc byte[NbdLimits.OptionHeaderSize];
        while (true)
        {
            if (!_reader.TryReadExactly(header))
                return null;
            ulong magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header[8..]);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header[12..]);
            if (magic != NbdMagic.IHaveOpt)
            {
                _log.LogWarning("Client {Client} sent a bad option magic 0x{Magic:x}; dropping it", _connection.ClientAddress, magic);
                return null;
            }
            if (length > NbdLimits.MaxOptionLength)
            {
                if (length > NbdLimits.DrainOptionLimit || option == NbdOption.ExportName)
                {
                    _log.LogWarning("Client {Client} sent a {Length}-byte option; dropping it", _connection.ClientAddress, length);
                    return null;
                }
                _reader.Skip(length);
                Reply(option, NbdOptionReplyType.ErrTooBig, "option data too long");
                continue;
            }
            byte[] data = length == 0 ? Array.Empty<byte>() : new byte[length];
            _reader.ReadExactly(data);

            if (_server.IsStopping && option != NbdOption.Abort)
            {
                if (option == NbdOption.ExportName)
                    return null;
                Reply(option, NbdOptionReplyType.ErrShutdown, "server is shutting down");
                continue;
            }

            if (!_tls && _connection.Origin.Tls?.Mode == TlsMode.Require && option is not (NbdOption.StartTls or NbdOption.Abort))
            {
                // FORCEDTLS: nothing but STARTTLS and ABORT before the upgrade; EXPORT_NAME cannot carry the error.
                if (option == NbdOption.ExportName)
                    return null;
                Reply(option, NbdOptionReplyType.ErrTlsRequired, "this server requires TLS: send STARTTLS first");
                continue;
            }

            switch (option)
            {
                case NbdOption.ExportName:
                    return HandleExportName(data);
                case NbdOption.Abort:
                    TryReply(option, NbdOptionReplyType.Ack);
                    return null;
                case NbdOption.List:
                    HandleList(data);
                    break;
                case NbdOption.StartTls:
                    if (!HandleStartTls(data))
                        return null;
                    break;
                case NbdOption.Info:
                case NbdOption.Go:
                    var session = HandleInfoOrGo(option, data);
                    if (session != null)
                        return session;
                    break;
                case NbdOption.StructuredReply:
                    if (data.Length != 0)
                        Reply(option, NbdOptionReplyType.ErrInvalid, "STRUCTURED_REPLY takes no data");
                    else
                    {
                        _structuredReplies = true;
                        Reply(option, NbdOptionReplyType.Ack);
                    }
                    break;
                case NbdOption.ListMetaContext:
                case NbdOption.SetMetaContext:
                    HandleMetaContext(option, data);
                    break;
                default:
                    Reply(option, NbdOptionReplyType.ErrUnsupported, $"option {(uint)option} is not supported");
                    break;
            }
        }
    }

    private NegotiatedSession? HandleExportName(byte[] data)
    {
        // EXPORT_NAME cannot carry an error: on failure the only answer is to hang up.
        if (data.Length > NbdLimits.MaxStringLength)
            return null;
        string name = Encoding.UTF8.GetString(data);
        var export = _server.ResolveExport(name, _connection, _tls, out _, out string? message);
        if (export == null || !export.TryAttach(_connection))
        {
            _log.LogInformation("Client {Client} asked for export '{Name}' with EXPORT_NAME: {Reason}", _connection.ClientAddress, name, message ?? "no free connection slot");
            return null;
        }
        Span<byte> reply = stackalloc byte[10 + 124];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(reply[8..], (ushort)export.FlagsFor(false));
        reply[10..].Clear();
        try
        {
            _transport.Write(_noZeroes ? reply[..10] : reply, default);
        }
        catch
        {
            export.Detach(_connection);
            throw;
        }
        // Structured replies only apply to GO sessions' flags; EXPORT_NAME clients may still have negotiated them.
        return new NegotiatedSession(export, _structuredReplies, SelectedContextFor(name), _transport, _reader, _tls);
    }

    private void HandleList(byte[] data)
    {
        if (data.Length != 0)
        {
            Reply(NbdOption.List, NbdOptionReplyType.ErrInvalid, "LIST takes no data");
            return;
        }
        var payload = new byte[NbdLimits.MaxOptionReplyPayload];
        foreach (var export in _server.ExportsVisibleTo(_connection, _tls))
        {
            byte[] name = Encoding.UTF8.GetBytes(export.Name);
            if (name.Length + 4 > payload.Length)
                continue;
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
            name.CopyTo(payload, 4);
            int used = 4 + name.Length;
            used += Utf8Truncate(export.Definition.Description, payload.AsSpan(used));
            Reply(NbdOption.List, NbdOptionReplyType.Server, payload.AsSpan(0, used));
        }
        Reply(NbdOption.List, NbdOptionReplyType.Ack);
    }

    /// <summary>Returns false when the connection must end (failed TLS handshake or a client that did not wait for the ACK).</summary>
    private bool HandleStartTls(byte[] data)
    {
        var tls = _connection.Origin.Tls;
        if (data.Length != 0)
        {
            Reply(NbdOption.StartTls, NbdOptionReplyType.ErrInvalid, "STARTTLS takes no data");
            return true;
        }
        if (tls == null)
        {
            Reply(NbdOption.StartTls, NbdOptionReplyType.ErrPolicy, "TLS is not configured on this server");
            return true;
        }
        if (_tls)
        {
            Reply(NbdOption.StartTls, NbdOptionReplyType.ErrInvalid, "TLS is already active");
            return true;
        }
        if (_reader.HasBufferedData)
        {
            // Bytes after STARTTLS but before our ACK would be plaintext smuggled into the TLS session.
            _log.LogWarning("Client {Client} sent data before the STARTTLS reply; dropping it", _connection.ClientAddress);
            return false;
        }
        Reply(NbdOption.StartTls, NbdOptionReplyType.Ack);
        try
        {
            var secure = TlsTransport.Accept(_transport, tls);
            _transport = secure;
            _reader = new BufferedReader(secure);
        }
        catch (Exception e) when (e is AuthenticationException or IOException)
        {
            _log.LogWarning("TLS handshake with {Client} failed: {Message}", _connection.ClientAddress, e.Message);
            return false;
        }
        _tls = true;
        // Nothing negotiated in plaintext survives the upgrade (nbdkit CVE-2021-3716).
        _structuredReplies = false;
        _baseAllocationSelected = false;
        _metaContextExport = null;
        _log.LogDebug("Client {Client} upgraded to TLS", _connection.ClientAddress);
        return true;
    }

    private NegotiatedSession? HandleInfoOrGo(NbdOption option, byte[] data)
    {
        // u32 name length, name, u16 count, u16[count] info requests.
        if (data.Length < 6)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "option data too short");
            return null;
        }
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6))
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "export name length exceeds the option");
            return null;
        }
        if (nameLength > NbdLimits.MaxStringLength)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "export names are limited to 4096 bytes");
            return null;
        }
        string name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        int pos = 4 + (int)nameLength;
        int count = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(pos));
        pos += 2;
        if (data.Length - pos != count * 2)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "information request count does not match the option length");
            return null;
        }
        bool wantName = false, wantDescription = false, wantBlockSize = false;
        for (int i = 0; i < count; i++)
        {
            switch ((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(pos + 2 * i)))
            {
                case NbdInfoType.Name: wantName = true; break;
                case NbdInfoType.Description: wantDescription = true; break;
                case NbdInfoType.BlockSize: wantBlockSize = true; break;
            }
        }

        var export = _server.ResolveExport(name, _connection, _tls, out var error, out string? message);
        if (export == null)
        {
            Reply(option, error, message ?? "export not available");
            return null;
        }
        bool go = option == NbdOption.Go;
        if (go && !export.TryAttach(_connection))
        {
            if (export.Removed)
                Reply(option, NbdOptionReplyType.ErrUnknown, $"export '{name}' is being removed");
            else
                Reply(option, NbdOptionReplyType.ErrPolicy, $"export '{name}' already has its maximum of {export.Definition.MaxConnections} connections");
            return null;
        }
        try
        {
            Span<byte> info = stackalloc byte[14];
            BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfoType.Export);
            BinaryPrimitives.WriteUInt64BigEndian(info[2..], (ulong)export.Size);
            BinaryPrimitives.WriteUInt16BigEndian(info[10..], (ushort)export.FlagsFor(_structuredReplies));
            Reply(option, NbdOptionReplyType.Info, info[..12]);
            if (wantName)
                ReplyInfoString(option, NbdInfoType.Name, export.Name);
            if (wantDescription && export.Definition.Description.Length > 0)
                ReplyInfoString(option, NbdInfoType.Description, export.Definition.Description);
            if (wantBlockSize)
            {
                BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfoType.BlockSize);
                BinaryPrimitives.WriteUInt32BigEndian(info[2..], 1);
                BinaryPrimitives.WriteUInt32BigEndian(info[6..], NbdLimits.PreferredBlockSize);
                BinaryPrimitives.WriteUInt32BigEndian(info[10..], NbdLimits.MaxPayload);
                Reply(option, NbdOptionReplyType.Info, info);
            }
            Reply(option, NbdOptionReplyType.Ack);
        }
        catch
        {
            if (go)
                export.Detach(_connection);
            throw;
        }
        return go ? new NegotiatedSession(export, _structuredReplies, SelectedContextFor(name), _transport, _reader, _tls) : null;
    }

    private uint? SelectedContextFor(string exportName) =>
        _structuredReplies && _baseAllocationSelected && _metaContextExport == exportName ? BaseAllocationId : null;

    private void HandleMetaContext(NbdOption option, byte[] data)
    {
        bool set = option == NbdOption.SetMetaContext;
        if (set)
        {
            // SET replaces the selection even when it fails.
            _baseAllocationSelected = false;
            _metaContextExport = null;
        }
        if (set && !_structuredReplies)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "SET_META_CONTEXT needs structured replies first");
            return;
        }
        // u32 export length, export, u32 query count, { u32 length, query }...
        var span = data.AsSpan();
        if (span.Length < 8)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "option data too short");
            return;
        }
        uint exportLength = BinaryPrimitives.ReadUInt32BigEndian(span);
        if (exportLength > (uint)(span.Length - 8))
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "export name length exceeds the option");
            return;
        }
        if (exportLength > NbdLimits.MaxStringLength)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "export names are limited to 4096 bytes");
            return;
        }
        string exportName = Encoding.UTF8.GetString(span.Slice(4, (int)exportLength));
        int pos = 4 + (int)exportLength;
        uint queryCount = BinaryPrimitives.ReadUInt32BigEndian(span[pos..]);
        pos += 4;
        var queries = new List<string>();
        for (uint i = 0; i < queryCount; i++)
        {
            if (span.Length - pos < 4)
            {
                Reply(option, NbdOptionReplyType.ErrInvalid, "truncated query");
                return;
            }
            uint queryLength = BinaryPrimitives.ReadUInt32BigEndian(span[pos..]);
            pos += 4;
            if (queryLength > (uint)(span.Length - pos))
            {
                Reply(option, NbdOptionReplyType.ErrInvalid, "query length exceeds the option");
                return;
            }
            queries.Add(Encoding.UTF8.GetString(span.Slice(pos, (int)queryLength)));
            pos += (int)queryLength;
        }
        if (pos != span.Length)
        {
            Reply(option, NbdOptionReplyType.ErrInvalid, "trailing bytes after the queries");
            return;
        }
        var export = _server.ResolveExport(exportName, _connection, _tls, out var error, out string? message);
        if (export == null)
        {
            Reply(option, error, message ?? "export not available");
            return;
        }

        bool match = set
            ? queries.Contains(NbdMetaContext.BaseAllocation)
            : queryCount == 0 || queries.Any(q => q == NbdMetaContext.BaseAllocation || q == NbdMetaContext.BaseNamespace);
        if (match)
        {
            byte[] name = Encoding.UTF8.GetBytes(NbdMetaContext.BaseAllocation);
            var payload = new byte[4 + name.Length];
            BinaryPrimitives.WriteUInt32BigEndian(payload, set ? BaseAllocationId : 0);
            name.CopyTo(payload, 4);
            Reply(option, NbdOptionReplyType.MetaContext, payload);
            if (set)
            {
                _baseAllocationSelected = true;
                _metaContextExport = exportName;
            }
        }
        Reply(option, NbdOptionReplyType.Ack);
    }

    private void ReplyInfoString(NbdOption option, NbdInfoType type, string value)
    {
        var payload = new byte[NbdLimits.MaxOptionReplyPayload];
        BinaryPrimitives.WriteUInt16BigEndian(payload, (ushort)type);
        int used = 2 + Utf8Truncate(value, payload.AsSpan(2));
        Reply(option, NbdOptionReplyType.Info, payload.AsSpan(0, used));
    }

    /// <summary>Encodes as much of <paramref name="value"/> as fits without splitting a character.</summary>
    private static int Utf8Truncate(string value, Span<byte> destination)
    {
        var encoder = Encoding.UTF8.GetEncoder();
        encoder.Convert(value.AsSpan(), destination, flush: true, out _, out int bytesUsed, out _);
        return bytesUsed;
    }

    private void Reply(NbdOption option, NbdOptionReplyType type, string message) =>
        Reply(option, type, Encoding.UTF8.GetBytes(message.Length > 1000 ? message[..1000] : message));

    private void Reply(NbdOption option, NbdOptionReplyType type) => Reply(option, type, ReadOnlySpan<byte>.Empty);

    private void TryReply(NbdOption option, NbdOptionReplyType type)
    {
        try { Reply(option, type); }
        catch (IOException) { }
    }

    private void Reply(NbdOption option, NbdOptionReplyType type, ReadOnlySpan<byte> payload)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_header, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(16), (uint)payload.Length);
        _transport.Write(_header, payload);
    }
}
