using System.Net;
using System.Net.Sockets;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// What the engine does differently for a TCP peer on this host (loopback, or one of this host's
/// own addresses, which the kernel also routes through the loopback device).
/// </summary>
internal static class LocalPeer
{
    private const int IPPROTO_TCP = 6;
    private const int TCP_CONGESTION = 13; // linux/tcp.h
    private const int AlgorithmNameMaximum = 16; // TCP_CA_NAME_MAX, the terminating NUL included

    /// <summary>
    /// Off only for A/B measurements (bench host --keep-loopback-pacing); see <see cref="AvoidPacing"/>.
    /// </summary>
    internal static bool AvoidPacingEnabled = true;

    public static bool IsOnThisHost(EndPoint? endPoint) => endPoint switch
    {
        IPEndPoint ip => IsOwnAddress(ip.Address.IsIPv4MappedToIPv6 ? ip.Address.MapToIPv4() : ip.Address),
        _ => true, // Unix socket or socket pair
    };

    private static bool IsOwnAddress(IPAddress address)
    {
        if (IPAddress.IsLoopback(address))
            return true;
        try
        {
            return System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
                .SelectMany(i => i.GetIPProperties().UnicastAddresses)
                .Any(a => a.Address.Equals(address));
        }
        catch (System.Net.NetworkInformation.NetworkInformationException)
        {
            return false;
        }
    }

    /// <summary>
    /// Moves a TCP connection whose peer is on this host off a pacing congestion control; connections
    /// to other hosts keep the system's choice. With BBR (the system's choice on many hosts, this one
    /// included) the kernel paces every send: a send that gets ahead of the pacing rate arms a
    /// high-resolution timer and the rest leaves from the timer's softirq. Between two processes on one host there is no network queue for pacing to
    /// protect, only that cost, and in a virtual machine each timer reprogramming traps to the
    /// hypervisor: a profile of 1 MiB reads from a file put a quarter of the server's samples in
    /// re-arming the pacing timer and waking the client. Cubic (or reno, which every host permits)
    /// sends at once. Loopback connections moved from BBR to cubic took 0.74x the wall time and 0.73x
    /// the server CPU for 1 MiB reads from a file, 0.67x/0.61x from memory, 0.76x/0.62x with four
    /// connections, 0.68x/0.62x for the 64 KiB random mix from memory; 4 KiB reads and writes, whose
    /// replies are small, did not change (docs/performance.md, round 7). Returns the algorithm set, or
    /// null when the connection was left as it was.
    /// </summary>
    public static string? AvoidPacing(Socket socket)
    {
        if (!AvoidPacingEnabled || !OperatingSystem.IsLinux())
            return null;
        try
        {
            Span<byte> name = stackalloc byte[AlgorithmNameMaximum];
            int length = socket.GetRawSocketOption(IPPROTO_TCP, TCP_CONGESTION, name);
            // bbr, and bbr2/bbr3 where a kernel carries them: the algorithms that ask for pacing. Checked
            // before the peer's address, whose test may list the host's interfaces, so a host that does not
            // pace pays one getsockopt per connection and nothing more.
            if (!name[..length].StartsWith("bbr"u8) || !IsOnThisHost(socket.RemoteEndPoint))
                return null;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return null;
        }
        return TrySet(socket, "cubic"u8) ? "cubic" : TrySet(socket, "reno"u8) ? "reno" : null;
    }

    private static bool TrySet(Socket socket, ReadOnlySpan<byte> algorithm)
    {
        try
        {
            socket.SetRawSocketOption(IPPROTO_TCP, TCP_CONGESTION, algorithm);
            return true;
        }
        catch (SocketException)
        {
            return false; // not loaded, or not in net.ipv4.tcp_allowed_congestion_control for this user
        }
    }
}
