namespace NbdPowerShell.Engine.Client;

/// <summary>Settings of an <see cref="NbdBlockClient"/>.</summary>
public sealed record NbdBlockClientOptions
{
    public static NbdBlockClientOptions Default { get; } = new();

    /// <summary>
    /// Connections to open when the server allows several (CAN_MULTI_CONN); a server without it gets one,
    /// whatever this says (the spec asks clients not to multiplex then). 1..16.
    /// </summary>
    public int Connections { get; init; } = 1;

    /// <summary>Requests one connection keeps in flight before further callers wait for a reply. 1..1024.</summary>
    public int MaxInFlightPerConnection { get; init; } = 64;

    /// <summary>Connect timeout and TLS. Structured replies and meta contexts are set by <see cref="BlockStatus"/>.</summary>
    public NbdClientOptions Client { get; init; } = NbdClientOptions.Default;

    /// <summary>
    /// Negotiate structured replies and the base:allocation meta context, so reads of holes come back as hole
    /// chunks and <see cref="NbdBlockClient.BlockStatusAsync"/> works. Servers that refuse are used with simple
    /// replies and <see cref="NbdBlockClient.SupportsBlockStatus"/> false.
    /// </summary>
    public bool BlockStatus { get; init; } = true;

    /// <summary>
    /// Run the continuation of an awaited request on the connection's reader thread instead of the thread pool.
    /// It saves a thread hand-off per request, but while a continuation runs that connection reads no replies, so
    /// continuations must be short and must never block waiting for another request of the same client.
    /// Off by default.
    /// </summary>
    public bool InlineCompletions { get; init; }

    /// <summary>
    /// When a connection breaks (server restarted, link dropped), open a fresh one to the same export in its place
    /// and send each request that failed with it once more there; <see cref="NbdBlockClient.Reconnects"/> counts
    /// them. The new connection must show the same size and flags, or the requests fail. Error replies are never
    /// retried. Off by default: a client that copies once would rather fail than repeat writes.
    /// </summary>
    public bool Reconnect { get; init; }
}
