namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Where a connection came from, which decides its TLS rules and the exports it may see: the listener that
/// accepted it (with that listener's TLS settings), or a socket handed in by the host itself.
/// </summary>
internal sealed class ConnectionOrigin
{
    private ConnectionOrigin(Listener? listener, TlsOptions? tls, bool trusted)
    {
        Listener = listener;
        Tls = tls;
        IsTrusted = trusted;
    }

    /// <summary>The accepting listener; null for sockets handed in with <see cref="NbdServer.ServeConnectedSocket(System.Net.Sockets.Socket)"/>.</summary>
    public Listener? Listener { get; }

    /// <summary>The TLS settings this connection negotiates under; null offers no STARTTLS.</summary>
    public TlsOptions? Tls { get; }

    /// <summary>
    /// A socket pair made by the host for its own kernel attach: it never leaves the process, so TLS would
    /// only cost copies. It sees every export, TLS-only ones included, without STARTTLS.
    /// </summary>
    public bool IsTrusted { get; }

    public static ConnectionOrigin Accepted(Listener listener) => new(listener, listener.Tls, trusted: false);

    public static ConnectionOrigin Connected(TlsOptions? tls) => new(null, tls, trusted: false);

    public static ConnectionOrigin Local { get; } = new(null, null, trusted: true);
}
