using System.Net;
using System.Net.Sockets;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// An allowlist of IPv4/IPv6 addresses and CIDR prefixes. IPv4-mapped IPv6 peers are matched as
/// IPv4. Unix-socket peers have no address and are governed by the socket file's permissions, so
/// they always pass.
/// </summary>
public sealed class AddressFilter
{
    private readonly (byte[] Prefix, int Bits)[] _entries;

    private AddressFilter((byte[], int)[] entries, IReadOnlyList<string> text)
    {
        _entries = entries;
        Entries = text;
    }

    public IReadOnlyList<string> Entries { get; }

    /// <summary>Parses entries such as "127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8".</summary>
    public static AddressFilter Parse(IEnumerable<string> entries)
    {
        var parsed = new List<(byte[], int)>();
        var text = new List<string>();
        foreach (var raw in entries)
        {
            var entry = raw.Trim();
            int slash = entry.IndexOf('/');
            string addressText = slash < 0 ? entry : entry[..slash];
            if (!IPAddress.TryParse(addressText, out var address))
                throw new FormatException($"'{raw}' is not an IP address or CIDR prefix.");
            // An IPv4-mapped entry is stored as IPv4 (peers are normalized the same way), so its
            // prefix length counts IPv6 bits: "::ffff:10.0.0.0/104" is 10.0.0.0/8, and a prefix
            // shorter than the 96-bit mapping prefix cannot be expressed as IPv4.
            int mappedBits = address.AddressFamily == AddressFamily.InterNetworkV6 && address.IsIPv4MappedToIPv6 ? 96 : 0;
            address = Normalize(address);
            byte[] bytes = address.GetAddressBytes();
            int bits = bytes.Length * 8;
            if (slash >= 0)
            {
                if (!int.TryParse(entry[(slash + 1)..], out bits) || bits < mappedBits || bits > mappedBits + bytes.Length * 8)
                    throw new FormatException($"'{raw}' has an invalid prefix length.");
                bits -= mappedBits;
            }
            parsed.Add((bytes, bits));
            text.Add(entry);
        }
        return new AddressFilter(parsed.ToArray(), text);
    }

    public bool Allows(EndPoint? endPoint)
    {
        if (endPoint is not IPEndPoint ip)
            return true;
        return Allows(ip.Address);
    }

    public bool Allows(IPAddress address)
    {
        byte[] bytes = Normalize(address).GetAddressBytes();
        foreach (var (prefix, bits) in _entries)
        {
            if (prefix.Length == bytes.Length && PrefixMatches(prefix, bytes, bits))
                return true;
        }
        return false;
    }

    private static IPAddress Normalize(IPAddress address) =>
        address.AddressFamily == AddressFamily.InterNetworkV6 && address.IsIPv4MappedToIPv6
            ? address.MapToIPv4()
            : address;

    private static bool PrefixMatches(byte[] prefix, byte[] address, int bits)
    {
        int whole = bits / 8;
        for (int i = 0; i < whole; i++)
        {
            if (prefix[i] != address[i])
                return false;
        }
        int rest = bits % 8;
        if (rest == 0)
            return true;
        int mask = 0xFF << (8 - rest) & 0xFF;
        return (prefix[whole] & mask) == (address[whole] & mask);
    }
}
