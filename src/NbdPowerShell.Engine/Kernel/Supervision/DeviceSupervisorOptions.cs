namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>How a supervisor works (not what it supervises: that is the <see cref="SupervisionRecord"/>).</summary>
public sealed record DeviceSupervisorOptions
{
    public static DeviceSupervisorOptions Default { get; } = new();

    /// <summary>
    /// Least limit for connecting to one server and negotiating (and reading the fingerprint blocks); see
    /// <see cref="ConnectLimit"/>.
    /// </summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// The limit for one connect and negotiation of a device whose kernel request timeout is
    /// <paramref name="requestTimeoutSeconds"/>: <see cref="ConnectTimeout"/>, or the request timeout when that is
    /// longer. The device waits that long for any one request, so a server that answers that slowly is one it works
    /// with; giving up on its handshake sooner would refuse a server the device itself tolerates (a TLS handshake on a
    /// starved machine).
    /// </summary>
    public TimeSpan ConnectLimit(int requestTimeoutSeconds) =>
        TimeSpan.FromSeconds(Math.Max(ConnectTimeout.TotalSeconds, requestTimeoutSeconds));

    /// <summary>First wait between reconnect rounds; doubles up to <see cref="MaximumBackoff"/>.</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Longest wait between rounds while the kernel still holds I/O (before the dead-connection timeout): at most this
    /// long passes between a server accepting again and the next attempt. A refused connection costs next to nothing.
    /// </summary>
    public TimeSpan MaximumBackoff { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Longest wait between rounds once the device is <see cref="SupervisionState.Dead"/>.</summary>
    public TimeSpan DeadBackoff { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How often the sockets are polled and the kernel asked (STATUS) whether the device still exists: the backstop to LINK_DEAD.</summary>
    public TimeSpan CheckInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Number of events kept for <see cref="SupervisionSnapshot.History"/>.</summary>
    public int HistoryCapacity { get; init; } = 100;

    /// <summary>TCP keepalive on the sockets given to the kernel, so an idle connection to a vanished host dies (and is replaced) too.</summary>
    public TimeSpan KeepAliveIdle { get; init; } = TimeSpan.FromSeconds(15);
}
