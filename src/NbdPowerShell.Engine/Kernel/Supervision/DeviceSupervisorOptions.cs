namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>How a supervisor works (not what it supervises: that is the <see cref="SupervisionRecord"/>).</summary>
public sealed record DeviceSupervisorOptions
{
    public static DeviceSupervisorOptions Default { get; } = new();

    /// <summary>Limit for connecting to one server and negotiating (and reading the fingerprint blocks).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);

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
