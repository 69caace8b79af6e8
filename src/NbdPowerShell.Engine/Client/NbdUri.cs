using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Text;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// An NBD URI (NetworkBlockDevice/nbd doc/uri.md): <c>nbd://host[:port]/export</c> or
/// <c>nbd+unix:///export?socket=/path</c> (and the TLS variants nbds://, nbds+unix://).
/// Parsed by hand because System.Uri normalises paths and hosts in ways that change export names.
/// </summary>
public sealed record NbdUri
{
    /// <summary>Host name or IP literal (IPv6 without brackets); empty for Unix sockets.</summary>
    public string Host { get; }
    public int Port { get; }
    /// <summary>Export name, already percent-decoded; empty means the default export.</summary>
    public string ExportName { get; }
    /// <summary>Unix socket path for nbd+unix URIs, otherwise null.</summary>
    public string? SocketPath { get; }
    /// <summary>True for nbds:// and nbds+unix://, which make TLS mandatory.</summary>
    public bool Tls { get; }

    public bool IsUnix => SocketPath is not null;

    public string Scheme => (Tls ? "nbds" : "nbd") + (IsUnix ? "+unix" : "");

    private NbdUri(string host, int port, string exportName, string? socketPath, bool tls)
    {
        Host = host;
        Port = port;
        ExportName = exportName;
        SocketPath = socketPath;
        Tls = tls;
    }

    public static NbdUri ForTcp(string host, int port = NbdLimits.DefaultPort, string exportName = "", bool tls = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        if (port is < 1 or > 65535) throw new ArgumentOutOfRangeException(nameof(port), port, "Port must be 1..65535.");
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        return new NbdUri(host, port, exportName ?? "", null, tls);
    }

    public static NbdUri ForUnix(string socketPath, string exportName = "", bool tls = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        return new NbdUri("", 0, exportName ?? "", socketPath, tls);
    }

    public NbdUri WithExportName(string exportName) => new(Host, Port, exportName ?? "", SocketPath, Tls);

    /// <summary>The same address with the TLS scheme (nbds://, nbds+unix://) or without it.</summary>
    public NbdUri WithTls(bool tls) => tls == Tls ? this : new(Host, Port, ExportName, SocketPath, tls);

    public static NbdUri Parse(string text) =>
        TryParse(text, out var uri, out var error) ? uri : throw new FormatException($"Not an NBD URI '{text}': {error}");

    public static bool TryParse(string? text, [NotNullWhen(true)] out NbdUri? uri) => TryParse(text, out uri, out _);

    /// <summary>Parses, or says in <paramref name="error"/> what is wrong.</summary>
    public static bool TryParse(string? text, [NotNullWhen(true)] out NbdUri? uri, out string error)
    {
        uri = null;
        error = "empty";
        if (string.IsNullOrWhiteSpace(text)) return false;
        int sep = text.IndexOf("://", StringComparison.Ordinal);
        if (sep <= 0) { error = "missing scheme (nbd://, nbd+unix://, nbds://, nbds+unix://)"; return false; }
        string scheme = text[..sep].ToLowerInvariant();
        bool tls, unix;
        switch (scheme)
        {
            case "nbd": tls = false; unix = false; break;
            case "nbds": tls = true; unix = false; break;
            case "nbd+unix": tls = false; unix = true; break;
            case "nbds+unix": tls = true; unix = true; break;
            default: error = $"unsupported scheme '{scheme}'"; return false;
        }

        string rest = text[(sep + 3)..];
        int hash = rest.IndexOf('#');
        if (hash >= 0) rest = rest[..hash];
        string query = "";
        int q = rest.IndexOf('?');
        if (q >= 0) { query = rest[(q + 1)..]; rest = rest[..q]; }
        int slash = rest.IndexOf('/');
        string authority = slash >= 0 ? rest[..slash] : rest;
        string path = slash >= 0 ? rest[(slash + 1)..] : "";
        // A user name (nbds://alice@host) only matters for TLS-PSK; it is not part of our identity.
        int at = authority.LastIndexOf('@');
        if (at >= 0) authority = authority[(at + 1)..];

        if (!TryDecode(path, out string export)) { error = "bad percent-encoding in the export name"; return false; }

        if (unix)
        {
            if (authority.Length > 0) { error = "a Unix socket URI has no host (nbd+unix:///export?socket=/path)"; return false; }
            string? socket = null;
            foreach (string pair in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
            {
                int eq = pair.IndexOf('=');
                string key = eq >= 0 ? pair[..eq] : pair;
                if (key == "socket")
                {
                    if (!TryDecode(eq >= 0 ? pair[(eq + 1)..] : "", out string value)) { error = "bad percent-encoding in the socket path"; return false; }
                    socket = value;
                }
            }
            if (string.IsNullOrEmpty(socket)) { error = "missing ?socket=/path"; return false; }
            uri = new NbdUri("", 0, export, socket, tls);
            return true;
        }

        string host;
        int port = NbdLimits.DefaultPort;
        string portText = "";
        if (authority.StartsWith('['))
        {
            int close = authority.IndexOf(']');
            if (close < 0) { error = "unterminated IPv6 literal"; return false; }
            host = authority[1..close];
            string after = authority[(close + 1)..];
            if (after.Length > 0)
            {
                if (after[0] != ':') { error = "junk after IPv6 literal"; return false; }
                portText = after[1..];
            }
            if (!IPAddress.TryParse(host, out var ip) || ip.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6)
            { error = $"'{host}' is not an IPv6 address"; return false; }
        }
        else
        {
            int colon = authority.IndexOf(':');
            if (colon >= 0)
            {
                host = authority[..colon];
                portText = authority[(colon + 1)..];
                if (portText.Contains(':')) { error = "IPv6 addresses must be in brackets"; return false; }
            }
            else host = authority;
            if (!TryDecode(host, out host)) { error = "bad percent-encoding in the host"; return false; }
        }
        if (host.Length == 0) host = "localhost";
        if (portText.Length > 0 && (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535))
        { error = $"bad port '{portText}'"; return false; }
        uri = new NbdUri(host, port, export, null, tls);
        return true;
    }

    public override string ToString()
    {
        var sb = new StringBuilder(Scheme).Append("://");
        if (!IsUnix)
        {
            sb.Append(Host.Contains(':') ? $"[{Host}]" : Encode(Host, keepSlash: false));
            if (Port != NbdLimits.DefaultPort) sb.Append(':').Append(Port.ToString(CultureInfo.InvariantCulture));
        }
        sb.Append('/').Append(Encode(ExportName, keepSlash: true));
        if (IsUnix) sb.Append("?socket=").Append(Encode(SocketPath!, keepSlash: true));
        return sb.ToString();
    }

    /// <summary>Percent-encodes everything but RFC 3986 unreserved characters (and '/' in paths).</summary>
    private static string Encode(string value, bool keepSlash)
    {
        var sb = new StringBuilder(value.Length);
        foreach (byte b in Encoding.UTF8.GetBytes(value))
        {
            char c = (char)b;
            if (char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~' || (keepSlash && c == '/')) sb.Append(c);
            else sb.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }

    private static bool TryDecode(string value, out string decoded)
    {
        decoded = value;
        if (!value.Contains('%')) return true;
        var bytes = new List<byte>(value.Length);
        for (int i = 0; i < value.Length; i++)
        {
            if (value[i] == '%')
            {
                if (i + 2 >= value.Length || !byte.TryParse(value.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
                    return false;
                bytes.Add(b);
                i += 2;
            }
            else
            {
                int next = value.IndexOf('%', i);
                if (next < 0) next = value.Length;
                bytes.AddRange(Encoding.UTF8.GetBytes(value[i..next])); // whole runs, so surrogate pairs stay together
                i = next - 1;
            }
        }
        decoded = Encoding.UTF8.GetString(bytes.ToArray());
        return true;
    }
}
