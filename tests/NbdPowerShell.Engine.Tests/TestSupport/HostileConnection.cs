using System.Net;
using System.Net.Sockets;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>
/// Sends one fuzz session's bytes as fast as the server takes them while discarding whatever it
/// answers (so it never blocks on a full socket buffer), then half-closes and waits for the server
/// to close. One thread, non-blocking socket, bounded time.
/// </summary>
internal static class HostileConnection
{
    public enum Outcome { Closed, Hung }

    public static Outcome Run(EndPoint endPoint, ReadOnlySpan<byte> bytes, byte[] scratch, TimeSpan limit, out long received)
    {
        received = 0;
        using var s = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.Connect(endPoint);
        s.Blocking = false;
        var deadline = DateTime.UtcNow + limit;
        bool sending = true, peerClosed = false;
        while (!peerClosed)
        {
            if (DateTime.UtcNow > deadline)
                return Outcome.Hung;
            bool progressed = false;
            if (sending)
            {
                if (bytes.IsEmpty)
                {
                    TryShutdownSend(s);
                    sending = false;
                }
                else
                {
                    int n = s.Send(bytes, SocketFlags.None, out var error);
                    if (error == SocketError.Success && n > 0)
                    {
                        bytes = bytes[n..];
                        progressed = true;
                    }
                    else if (error != SocketError.WouldBlock)
                    {
                        sending = false; // the server hung up on us: expected for fatal inputs
                    }
                }
            }
            int r = s.Receive(scratch, 0, scratch.Length, SocketFlags.None, out var rerror);
            if (rerror == SocketError.Success)
            {
                if (r == 0)
                    peerClosed = true;
                received += r;
                progressed |= r > 0;
            }
            else if (rerror != SocketError.WouldBlock)
            {
                peerClosed = true; // reset
            }
            if (!progressed && !peerClosed)
                s.Poll(10_000, sending ? SelectMode.SelectWrite : SelectMode.SelectRead);
        }
        return Outcome.Closed;
    }

    private static void TryShutdownSend(Socket s)
    {
        try { s.Shutdown(SocketShutdown.Send); }
        catch (SocketException) { }
    }
}
