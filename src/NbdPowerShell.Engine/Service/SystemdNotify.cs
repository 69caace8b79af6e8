using System.Net.Sockets;
using System.Text;

namespace NbdPowerShell.Engine.Service;

/// <summary>
/// sd_notify without libsystemd: under a Type=notify unit, systemd passes NOTIFY_SOCKET, a datagram socket that
/// takes "READY=1" once the service answers on its control socket and "STOPPING=1" when it begins to stop.
/// Outside systemd it does nothing.
/// </summary>
internal static class SystemdNotify
{
    /// <summary>True when systemd started this process (it sets INVOCATION_ID for every unit it runs).</summary>
    public static bool IsUnderSystemd => Environment.GetEnvironmentVariable("INVOCATION_ID") is { Length: > 0 };

    public static void Ready() => Send($"READY=1\nMAINPID={Environment.ProcessId}\nSTATUS=Serving");

    public static void Stopping() => Send("STOPPING=1\nSTATUS=Stopping");

    private static void Send(string message)
    {
        string? path = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        if (string.IsNullOrEmpty(path))
            return;
        // "@name" is an abstract socket: a leading NUL byte on the wire.
        if (path[0] == '@')
            path = "\0" + path[1..];
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.SendTo(Encoding.UTF8.GetBytes(message), new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException)
        {
            // systemd went away or the unit is not Type=notify: nothing to tell.
        }
    }
}
