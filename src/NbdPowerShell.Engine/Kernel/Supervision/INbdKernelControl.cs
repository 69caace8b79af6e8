namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// What a supervisor needs from the kernel, so the supervision logic can also be driven by a simulated kernel in tests.
/// The real one is <see cref="NetlinkKernelControl"/>.
/// </summary>
internal interface INbdKernelControl : IDisposable
{
    /// <summary>NBD_CMD_STATUS for one device: true while it is configured, false once disconnected, null when the kernel cannot be asked.</summary>
    bool? IsConnected(int index);

    /// <summary>/sys/block/nbdN/backend: the identifier the device was connected with; null when there is none (or no device).</summary>
    string? BackendIdentifier(int index);

    /// <summary>NBD_CMD_RECONFIGURE; throws <see cref="NetlinkException"/> with the kernel's errno.</summary>
    void Reconfigure(NbdNetlinkFamily.ReconfigureRequest request);

    /// <summary>Calls <paramref name="handler"/> for every LINK_DEAD of the device (and when notifications were lost).</summary>
    IDisposable WatchLinkDead(int index, Action<NbdLinkSignal> handler);
}
