namespace NbdPowerShell.Engine.Server;

public sealed class NbdServerOptions
{
    /// <summary>A negotiating client that sends nothing for this long is dropped, so idle clients cannot hold slots.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Requests one connection may have in flight; the reader stops reading when this many are running.</summary>
    public int MaxRequestsInFlight { get; init; } = 64;

    /// <summary>Worker threads per connection for blocking (file, device) stores, like nbdkit's -t.</summary>
    public int WorkerThreads { get; init; } = 8;

    /// <summary>Most simultaneous connections for the whole server (handshake included); 0 = unlimited.</summary>
    public int MaxConnections { get; init; }

    /// <summary>Clients admitted at all; others are dropped before the handshake. Null admits everyone.</summary>
    public AddressFilter? AllowedClients { get; init; }

    /// <summary>TLS settings; null means no TLS (STARTTLS gets ERR_POLICY).</summary>
    public TlsOptions? Tls { get; init; }

    /// <summary>How long a graceful stop waits for in-flight requests before closing sockets.</summary>
    public TimeSpan StopGracePeriod { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>When large file reads are spliced from the page cache to the socket instead of copied (tests and benchmarks choose).</summary>
    internal FileReadSplicing FileReadSplicing { get; init; } = FileReadSplicing.RemotePeers;
}

/// <summary>
/// Splicing file pages to the socket saves the server its copy, but a client on the same host then
/// reads pages no CPU has touched (cache misses on its side), where after a copy it would read a
/// socket buffer the server's copy had just warmed. Measured over loopback on two cores the client
/// spent 2.5x the CPU and throughput halved, so by default only remote peers get spliced reads.
/// </summary>
internal enum FileReadSplicing
{
    RemotePeers,
    Always,
    Never,
}
