namespace NbdPowerShell.Engine.Kernel;

/// <summary>Source of the kernel's connected state per device index; injectable so discovery can be tested on a fake tree.</summary>
public interface INbdStatusProvider
{
    /// <summary>Index → connected, or null when the kernel cannot be asked (no netlink family, no permission).</summary>
    IReadOnlyDictionary<int, bool>? GetStatus();
}

/// <summary>Asks the kernel with NBD_CMD_STATUS over generic netlink.</summary>
public sealed class NetlinkStatusProvider : INbdStatusProvider
{
    public IReadOnlyDictionary<int, bool>? GetStatus()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            using var family = NbdNetlinkFamily.TryOpen();
            return family?.Status();
        }
        catch (NetlinkException) { return null; }
        catch (TimeoutException) { return null; }
    }
}
