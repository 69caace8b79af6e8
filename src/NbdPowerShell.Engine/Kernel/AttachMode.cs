namespace NbdPowerShell.Engine.Kernel;

/// <summary>How a device is (to be) bound to its sockets.</summary>
public enum AttachMode
{
    /// <summary>Netlink when the "nbd" family exists, otherwise ioctl.</summary>
    Auto,
    /// <summary>Generic netlink CONNECT: the kernel owns the sockets; the device outlives our process.</summary>
    Netlink,
    /// <summary>NBD_SET_SOCK + NBD_DO_IT: a thread of this process must stay in DO_IT; the device dies with the process.</summary>
    Ioctl,
}
