using System.Net;
using System.Net.Sockets;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Transport over a connected stream socket (TCP or Unix). Writes go straight to sendmsg with a
/// two-element iovec, so a reply header and its data leave in one syscall without copying or
/// allocating.
/// </summary>
internal sealed class SocketTransport : NbdTransport
{
    private readonly Socket _socket;
    private int _shutdown;

    public SocketTransport(Socket socket)
    {
        _socket = socket;
        if (socket.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
        {
            socket.NoDelay = true;
            EnableDeadPeerDetection(socket);
        }
    }

    public Socket Socket => _socket;

    /// <summary>
    /// A peer that vanishes without FIN or RST (power loss, partition) would otherwise hold its
    /// connection slot forever and block a reply send for the kernel's ~15 minute retransmit limit.
    /// Keepalives find an idle dead peer in about two minutes; TCP_USER_TIMEOUT bounds unacknowledged sends.
    /// </summary>
    private static void EnableDeadPeerDetection(Socket socket)
    {
        const int IPPROTO_TCP = 6, TCP_USER_TIMEOUT = 18;
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 60);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 10);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 6);
            if (OperatingSystem.IsLinux())
                socket.SetRawSocketOption(IPPROTO_TCP, TCP_USER_TIMEOUT, BitConverter.GetBytes(120_000));
        }
        catch (SocketException)
        {
            // Best effort: a platform without these options still serves.
        }
    }

    public override EndPoint? RemoteEndPoint
    {
        get
        {
            try { return _socket.RemoteEndPoint; }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return null; }
        }
    }

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return _socket.Receive(buffer, SocketFlags.None);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown
                                            or SocketError.ConnectionAborted or SocketError.OperationAborted)
        {
            return 0;
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
    }

    public override unsafe void Write(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body)
    {
        bool added = false;
        var handle = _socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            fixed (byte* h = head)
            fixed (byte* b = body)
            {
                Libc.IoVec* iov = stackalloc Libc.IoVec[2];
                iov[0] = new Libc.IoVec { Base = (nint)h, Length = (nuint)head.Length };
                iov[1] = new Libc.IoVec { Base = (nint)b, Length = (nuint)body.Length };
                int count = body.IsEmpty ? 1 : 2;
                int first = 0;
                while (first < count)
                {
                    var msg = new Libc.MsgHdr { Iov = iov + first, IovLength = (nuint)(count - first) };
                    nint sent = Libc.sendmsg(fd, &msg, Libc.MSG_NOSIGNAL);
                    if (sent < 0)
                    {
                        int errno = Libc.LastErrno;
                        if (errno == Libc.EINTR)
                            continue;
                        if (errno == Libc.EAGAIN)
                        {
                            // The runtime may have made the descriptor non-blocking; wait for room.
                            var pfd = new Libc.PollFd { Fd = fd, Events = Libc.POLLOUT };
                            Libc.Poll(&pfd, 1, 1000);
                            continue;
                        }
                        throw new IOException($"send failed: {Libc.StrError(errno)}", errno);
                    }
                    // Advance past what the kernel took; partial sends are normal for large bodies.
                    while (sent > 0 && first < count)
                    {
                        nint len = (nint)iov[first].Length;
                        if (sent >= len)
                        {
                            sent -= len;
                            first++;
                        }
                        else
                        {
                            iov[first].Base += sent;
                            iov[first].Length -= (nuint)sent;
                            sent = 0;
                        }
                    }
                    // Skip empty trailing vectors.
                    while (first < count && iov[first].Length == 0)
                        first++;
                }
            }
        }
        catch (ObjectDisposedException)
        {
            throw new IOException("The connection is closed.");
        }
        finally
        {
            if (added)
                handle.DangerousRelease();
        }
    }

    public override void Shutdown()
    {
        if (Interlocked.Exchange(ref _shutdown, 1) != 0)
            return;
        try { _socket.Shutdown(SocketShutdown.Both); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public override void ShutdownSend()
    {
        try { _socket.Shutdown(SocketShutdown.Send); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public override void DrainUntilClosed(TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        Span<byte> scratch = stackalloc byte[4096];
        try
        {
            while (DateTime.UtcNow < until)
            {
                // Poll rather than block so a silent peer cannot hold us past the deadline.
                if (!_socket.Poll(TimeSpan.FromMilliseconds(50), SelectMode.SelectRead))
                    continue;
                if (_socket.Receive(scratch, SocketFlags.None) == 0)
                    return;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public override void Dispose()
    {
        Shutdown();
        _socket.Dispose();
    }
}
