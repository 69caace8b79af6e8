using System.Buffers.Binary;
using System.Text;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// Structure-aware generator of hostile client byte streams. Each session is what one connection
/// sends: a valid prefix up to some point (greeting, options, GO), then mutated messages. Inputs
/// are counted per mutated message: a greeting, an option, or a request header (with its payload).
/// Messages that end a session on the server (wrong magic, absurd lengths, truncation, DISC,
/// ABORT, a successful GO in the option phase) are mostly placed last so that one connection
/// carries many inputs.
/// </summary>
internal sealed class NbdFuzzer
{
    public enum Kind { Handshake, Options, Requests }

    public sealed record Session(Kind Kind, byte[] Bytes, int Inputs);

    /// <summary>The length values every length field is tried with.</summary>
    private static readonly uint[] SpecialLengths = { 0, 1, 4095, 4096, 65536, 1u << 31, uint.MaxValue, 65535, 4097, 1 << 20, 1 << 26 };

    private static readonly ulong[] SpecialOffsets =
    {
        0, 1, (1UL << 63) - 1, 1UL << 63, (1UL << 63) + 1, ulong.MaxValue, ulong.MaxValue - 511, ulong.MaxValue - 4095,
        1UL << 32, (1UL << 32) - 1, 1UL << 40,
    };

    private static readonly uint[] WrongRequestMagics =
    {
        0x12560953, 0x96744668, 0x25609514, 0x21e41c71, NbdMagic.SimpleReply, NbdMagic.StructuredReply, 0x6e8a278c, 0, 0xFFFFFFFF,
    };

    private readonly Random _rng;
    private readonly string[] _exportNames;
    private readonly long _exportSize;

    /// <param name="exportNames">Exports the fuzz may attach to (never the one the well-behaved client checks).</param>
    public NbdFuzzer(int seed, string[] exportNames, long exportSize)
    {
        _rng = new Random(seed);
        _exportNames = exportNames;
        _exportSize = exportSize;
    }

    public Session Next(Kind kind) => kind switch
    {
        Kind.Handshake => HandshakeSession(),
        Kind.Options => OptionSession(_rng.Next(1, 41)),
        _ => RequestSession(_rng.Next(50, 301)),
    };

    private Session HandshakeSession()
    {
        var buf = new MemoryStream();
        uint flags = _rng.Next(6) switch
        {
            0 => 1u << _rng.Next(32),                       // every single bit
            1 => (1u << _rng.Next(32)) | 1,                 // an unknown bit beside FIXED_NEWSTYLE
            2 => (uint)_rng.NextInt64(0, 1L << 32),         // anything
            3 => (uint)_rng.Next(4),                        // the valid ones
            4 => (uint)(NbdMagic.OldStyle >> 32),           // oldstyle-looking noise
            _ => 0xFFFFFFFF,
        };
        WriteU32(buf, flags);
        var bytes = buf.ToArray();
        switch (_rng.Next(5))
        {
            case 0: // truncated greeting: 0..3 bytes
                bytes = bytes[.._rng.Next(4)];
                break;
            case 1: // greeting followed by junk
                bytes = bytes.Concat(RandomBytes(_rng.Next(1, 64))).ToArray();
                break;
            case 2: // valid flags, then an option whose header is cut or whose magic is wrong
                var option = new MemoryStream();
                WriteU64(option, _rng.Next(2) == 0 ? NbdMagic.IHaveOpt : (ulong)_rng.NextInt64());
                WriteU32(option, (uint)_rng.Next(16));
                WriteU32(option, SpecialLengths[_rng.Next(SpecialLengths.Length)]);
                var o = option.ToArray();
                bytes = new byte[] { 0, 0, 0, (byte)_rng.Next(4) }.Concat(o[.._rng.Next(o.Length + 1)]).ToArray();
                break;
        }
        return new Session(Kind.Handshake, bytes, 1);
    }

    private Session OptionSession(int count)
    {
        var buf = new MemoryStream();
        WriteU32(buf, (uint)(_rng.Next(2) == 0 ? 3 : 1));
        for (int i = 0; i < count; i++)
            buf.Write(MutatedOption(last: i == count - 1));
        return new Session(Kind.Options, buf.ToArray(), count);
    }

    private Session RequestSession(int count)
    {
        var buf = new MemoryStream();
        WriteU32(buf, 3);
        bool structured = _rng.Next(2) == 0;
        string name = _exportNames[_rng.Next(_exportNames.Length)];
        if (structured)
        {
            WriteOption(buf, NbdOption.StructuredReply, default);
            if (_rng.Next(2) == 0)
                WriteOption(buf, NbdOption.SetMetaContext, MetaContextData(name, NbdMetaContext.BaseAllocation));
        }
        if (_rng.Next(10) == 0)
        {
            WriteOption(buf, NbdOption.ExportName, Encoding.UTF8.GetBytes(name));
        }
        else
        {
            WriteOption(buf, NbdOption.Go, InfoData(name, 3, 1, 2));
        }
        for (int i = 0; i < count; i++)
            buf.Write(MutatedRequest(last: i == count - 1));
        return new Session(Kind.Requests, buf.ToArray(), count);
    }

    private byte[] MutatedOption(bool last)
    {
        bool mayEnd = last || _rng.Next(40) == 0;
        uint code;
        while (true)
        {
            code = _rng.Next(8) switch
            {
                0 => (uint)_rng.NextInt64(0, 1L << 32),
                1 => 0x80000000u | (uint)_rng.Next(16),
                _ => (uint)_rng.Next(16), // every option 0..15
            };
            // EXPORT_NAME and ABORT end negotiation; keep them for the end of a sequence.
            if (mayEnd || code is not (1 or 2))
                break;
        }
        string name = PickName();
        byte[] data = (NbdOption)code switch
        {
            NbdOption.ExportName => Encoding.UTF8.GetBytes(name),
            NbdOption.Info or NbdOption.Go => InfoData(name, RandomInfoRequests()),
            NbdOption.ListMetaContext or NbdOption.SetMetaContext =>
                MetaContextData(name, Enumerable.Range(0, _rng.Next(4)).Select(_ => PickQuery()).ToArray()),
            NbdOption.List or NbdOption.StructuredReply or NbdOption.StartTls or NbdOption.Abort or NbdOption.ExtendedHeaders =>
                _rng.Next(4) == 0 ? RandomBytes(_rng.Next(1, 16)) : Array.Empty<byte>(),
            _ => RandomBytes(_rng.Next(0, 32)),
        };
        // A GO that would succeed enters transmission; keep it for the end too.
        if (code == (uint)NbdOption.Go && !mayEnd)
            data = InfoData(name + "-missing", RandomInfoRequests());

        uint length = (uint)data.Length;
        ulong magic = NbdMagic.IHaveOpt;
        switch (_rng.Next(10))
        {
            case 0: // inner length fields (name length, count, query length) set to special values
                if (data.Length >= 4)
                    BinaryPrimitives.WriteUInt32BigEndian(data, SpecialLengths[_rng.Next(SpecialLengths.Length)]);
                if (data.Length >= 6 && _rng.Next(2) == 0)
                    BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(data.Length - 2), (ushort)_rng.Next(65536));
                break;
            case 1: // bit flips in the data
                FlipBits(data, _rng.Next(1, 6));
                break;
            case 2: // data truncated at a random boundary (the header still says the shorter length)
                data = data[.._rng.Next(data.Length + 1)];
                length = (uint)data.Length;
                break;
            case 3 when mayEnd: // the length field lies: the server reads our next bytes as data, or drops us
                length = SpecialLengths[_rng.Next(SpecialLengths.Length)];
                break;
            case 4 when mayEnd: // wrong magic
                magic = _rng.Next(2) == 0 ? NbdMagic.Init : (ulong)_rng.NextInt64() ^ NbdMagic.IHaveOpt;
                break;
            case 5 when mayEnd: // oversized data that the server must drain or refuse
                data = new byte[_rng.Next(2) == 0 ? 65537 : 70000];
                length = (uint)data.Length;
                break;
        }
        var frame = new MemoryStream();
        WriteU64(frame, magic);
        WriteU32(frame, code);
        WriteU32(frame, length);
        frame.Write(data);
        var bytes = frame.ToArray();
        if (last && _rng.Next(6) == 0)
            bytes = bytes[.._rng.Next(bytes.Length)]; // truncated at any byte boundary, then the connection ends
        return bytes;
    }

    private byte[] MutatedRequest(bool last)
    {
        bool mayEnd = last || _rng.Next(200) == 0;
        ushort command;
        while (true)
        {
            command = _rng.Next(10) switch
            {
                0 => (ushort)_rng.Next(65536),
                _ => (ushort)_rng.Next(11), // every command 0..10
            };
            if (mayEnd || command != (ushort)NbdCommand.Disconnect)
                break;
        }
        ushort flags = _rng.Next(10) switch
        {
            < 5 => 0,
            5 or 6 => (ushort)(1 << _rng.Next(16)), // every flag bit
            7 or 8 => (ushort)_rng.Next(32),         // combinations of the known ones
            _ => (ushort)_rng.Next(65536),
        };
        ulong offset = _rng.Next(10) < 7
            ? (ulong)_rng.NextInt64(0, _exportSize / 512) * 512
            : _rng.Next(3) switch
            {
                0 => SpecialOffsets[_rng.Next(SpecialOffsets.Length)],
                1 => (ulong)(_exportSize + _rng.Next(-2, 3)),
                _ => (ulong)_rng.NextInt64() * 2 + (ulong)_rng.Next(2),
            };
        uint length = _rng.Next(10) < 7
            ? _rng.Next(4) switch { 0 => 0, 1 => 512, 2 => 4096, _ => (uint)_rng.Next(1, 65537) }
            : SpecialLengths[_rng.Next(SpecialLengths.Length)];
        uint magic = NbdMagic.Request;

        bool bigWrite = command == (ushort)NbdCommand.Write && length > 65536;
        if (bigWrite && !mayEnd)
            length = (uint)_rng.Next(1, 65537); // a big announced payload desynchronises the stream: keep it for the end

        var header = new byte[NbdLimits.RequestHeaderSize];
        BinaryPrimitives.WriteUInt32BigEndian(header, magic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), (ulong)_rng.NextInt64());
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);

        byte[] payload = command == (ushort)NbdCommand.Write && length <= 65536 ? RandomBytes((int)length) : Array.Empty<byte>();
        if (mayEnd)
        {
            switch (_rng.Next(6))
            {
                case 0: // wrong magic: reserved, extended-header, reply magics, anything
                    BinaryPrimitives.WriteUInt32BigEndian(header, _rng.Next(3) == 0 ? (uint)_rng.Next() : WrongRequestMagics[_rng.Next(WrongRequestMagics.Length)]);
                    break;
                case 1: // bit flips anywhere in the header, magic included
                    FlipBits(header, _rng.Next(1, 4));
                    break;
                case 2: // header cut at every boundary
                    return header[.._rng.Next(header.Length)];
                case 3 when payload.Length > 1: // payload cut short
                    return header.Concat(payload[.._rng.Next(payload.Length)]).ToArray();
                case 4: // payload longer than announced: the rest is read as the next header
                    payload = payload.Concat(RandomBytes(_rng.Next(1, 100))).ToArray();
                    break;
            }
        }
        else if (_rng.Next(20) == 0)
        {
            FlipBits(header.AsSpan(4), 1); // a flip past the magic keeps the stream in sync
        }
        return header.Concat(payload).ToArray();
    }

    private ushort[] RandomInfoRequests() =>
        Enumerable.Range(0, _rng.Next(5)).Select(_ => (ushort)(_rng.Next(3) == 0 ? _rng.Next(65536) : _rng.Next(5))).ToArray();

    private string PickName() => _rng.Next(8) switch
    {
        0 => "",
        1 => new string('n', _rng.Next(4090, 4100)),
        2 => Encoding.UTF8.GetString(RandomBytes(_rng.Next(1, 20))),
        _ => _exportNames[_rng.Next(_exportNames.Length)],
    };

    private string PickQuery() => _rng.Next(6) switch
    {
        0 => NbdMetaContext.BaseAllocation,
        1 => NbdMetaContext.BaseNamespace,
        2 => "qemu:dirty-bitmap:x",
        3 => "",
        4 => new string('q', 5000),
        _ => Encoding.UTF8.GetString(RandomBytes(_rng.Next(1, 30))),
    };

    private byte[] RandomBytes(int count)
    {
        var b = new byte[count];
        _rng.NextBytes(b);
        return b;
    }

    private void FlipBits(Span<byte> data, int flips)
    {
        if (data.IsEmpty)
            return;
        for (int i = 0; i < flips; i++)
            data[_rng.Next(data.Length)] ^= (byte)(1 << _rng.Next(8));
    }

    private static byte[] InfoData(string name, params ushort[] requests)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var data = new byte[4 + nameBytes.Length + 2 + 2 * requests.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes.Length);
        nameBytes.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + nameBytes.Length), (ushort)requests.Length);
        for (int i = 0; i < requests.Length; i++)
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + nameBytes.Length + 2 * i), requests[i]);
        return data;
    }

    private static byte[] MetaContextData(string export, params string[] queries) => RawNbdClient.MetaContextData(export, queries);

    private static void WriteOption(Stream s, NbdOption option, ReadOnlySpan<byte> data)
    {
        WriteU64(s, NbdMagic.IHaveOpt);
        WriteU32(s, (uint)option);
        WriteU32(s, (uint)data.Length);
        s.Write(data);
    }

    private static void WriteU32(Stream s, uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        s.Write(b);
    }

    private static void WriteU64(Stream s, ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        s.Write(b);
    }
}
