using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Transport over a connected stream socket (TCP or Unix). Writes go straight to sendmsg with
/// iovecs, so a reply header and its data leave in one syscall without copying or allocating;
/// file pages are spliced to the socket and memory-store data sent from the store's own pinned chunks.
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
            LocalPeer.AvoidPacing(socket);
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

    // Written by the one reader thread; read racily by the handshake deadline timer, which only
    // needs to see that it moved.
    private long _bytesReceived;

    public override long BytesReceived => Volatile.Read(ref _bytesReceived);

    public override int Read(Span<byte> buffer)
    {
        try
        {
            int n = _socket.Receive(buffer, SocketFlags.None);
            Volatile.Write(ref _bytesReceived, _bytesReceived + n);
            return n;
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

    /// <summary>
    /// One recvmsg over all the vectors: a write's payload lands in its destination (a pooled
    /// buffer or the memory store's chunks) and the bytes after it, the next request, in the
    /// reader's buffer, in the same call. Waits through a descriptor the runtime made non-blocking.
    /// </summary>
    public override unsafe int ReadVectors(Libc.IoVec* vectors, int count)
    {
        int fd;
        bool added;
        try
        {
            fd = AddRef(out added);
        }
        catch (IOException)
        {
            return 0; // closed: the end of the stream, as Read reports it
        }
        try
        {
            var msg = new Libc.MsgHdr { Iov = vectors, IovLength = (nuint)Math.Min(count, Libc.IOV_MAX) };
            while (true)
            {
                nint n = Libc.recvmsg(fd, &msg, 0);
                if (n >= 0)
                {
                    Volatile.Write(ref _bytesReceived, _bytesReceived + n);
                    return (int)n;
                }
                int errno = Libc.LastErrno;
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.EAGAIN)
                {
                    // Shutdown (a stop, a dead handshake) wakes the poll: the receive then reads end of stream.
                    var pfd = new Libc.PollFd { Fd = fd, Events = Libc.POLLIN };
                    Libc.Poll(&pfd, 1, 1000);
                    continue;
                }
                // As Read: a reset or aborted connection ends the stream; anything else is an error.
                if (errno is Libc.ECONNRESET or Libc.ECONNABORTED or Libc.ESHUTDOWN or Libc.ENOTCONN or Libc.EBADF)
                    return 0;
                throw new IOException($"receive failed: {Libc.StrError(errno)}", errno);
            }
        }
        finally
        {
            Release(added);
        }
    }

    public override bool ZeroCopy => true;

    public override bool PeerIsLocal => LocalPeer.IsOnThisHost(RemoteEndPoint);

    // Pinned, never written: the source of zeroes for holes and for file ranges past the end of the file.
    internal static readonly byte[] Zeroes = GC.AllocateArray<byte>(64 * 1024, pinned: true);

    public override unsafe void Write(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body)
    {
        int fd = AddRef(out bool added);
        try
        {
            fixed (byte* h = head)
            fixed (byte* b = body)
            {
                Libc.IoVec* iov = stackalloc Libc.IoVec[2];
                iov[0] = new Libc.IoVec { Base = (nint)h, Length = (nuint)head.Length };
                iov[1] = new Libc.IoVec { Base = (nint)b, Length = (nuint)body.Length };
                SendVectors(fd, iov, body.IsEmpty ? 1 : 2, 0);
            }
        }
        finally
        {
            Release(added);
        }
    }

    /// <summary>
    /// The header goes with MSG_MORE so it shares a segment with the data, then the file's pages
    /// move from the pipe to the socket without a copy, the pipe refilled from the file while more
    /// is left. Short returns (a full send buffer on a non-blocking socket, a signal) continue where
    /// they stopped; the end of the file ends the splicing and the rest goes as zeroes. After the
    /// header is out a file error can only end the connection (an IOException).
    /// </summary>
    public override unsafe void WriteFile(ReadOnlySpan<byte> head, SplicePipe pipe, int descriptor, long offset, int count)
    {
        int fd = AddRef(out bool added);
        try
        {
            fixed (byte* h = head)
            {
                var iov = new Libc.IoVec { Base = (nint)h, Length = (nuint)head.Length };
                SendVectors(fd, &iov, 1, count > 0 ? Libc.MSG_MORE : 0);
            }
            long next = offset + pipe.Buffered;
            int left = count;
            while (left > 0)
            {
                if (pipe.Buffered == 0)
                {
                    int n = pipe.Fill(descriptor, next, left);
                    if (n == 0)
                    {
                        SendZeroes(fd, left);
                        return;
                    }
                    next += n;
                }
                left -= pipe.Buffered;
                Drain(fd, pipe);
            }
        }
        catch (StorageException e)
        {
            throw new IOException(e.Message, e);
        }
        finally
        {
            Release(added);
        }
    }

    /// <summary>
    /// Pipe to socket, without SPLICE_F_MORE: with a small send window every call moves a few KiB,
    /// and a corked remainder would wait for TCP's 200 ms cork timer each time.
    /// </summary>
    private static unsafe void Drain(int fd, SplicePipe pipe)
    {
        while (pipe.Buffered > 0)
        {
            nint n = Libc.Splice(pipe.ReadEnd, null, fd, null, (nuint)pipe.Buffered, Libc.SPLICE_F_MOVE);
            if (n > 0)
            {
                pipe.Buffered -= (int)n;
                continue;
            }
            RetryOrThrow(fd, n == 0 ? Libc.EPIPE : Libc.LastErrno, "splice to socket");
        }
    }

    /// <summary>
    /// One iovec per segment, pointing into the store's pinned chunks (holes at the shared zero
    /// buffer), so the kernel copies straight from the store into the socket; more than IOV_MAX
    /// segments go out as several sendmsg calls with MSG_MORE between them.
    /// </summary>
    public override unsafe void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<MemorySegment> segments)
    {
        int fd = AddRef(out bool added);
        try
        {
            byte* zeroes = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Zeroes));
            Libc.IoVec* iov = stackalloc Libc.IoVec[Libc.IOV_MAX];
            fixed (byte* h = head)
            {
                iov[0] = new Libc.IoVec { Base = (nint)h, Length = (nuint)head.Length };
                int used = 1;
                foreach (var segment in segments)
                {
                    int left = segment.Length;
                    while (left > 0)
                    {
                        if (used == Libc.IOV_MAX)
                        {
                            SendVectors(fd, iov, used, Libc.MSG_MORE);
                            used = 0;
                        }
                        int n;
                        if (segment.Chunk is null)
                        {
                            n = Math.Min(left, Zeroes.Length);
                            iov[used++] = new Libc.IoVec { Base = (nint)zeroes, Length = (nuint)n };
                        }
                        else
                        {
                            // Pinned-heap arrays never move, so the address stays valid while the segment holds the array.
                            n = left;
                            byte* chunk = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(segment.Chunk));
                            iov[used++] = new Libc.IoVec { Base = (nint)(chunk + segment.Offset), Length = (nuint)n };
                        }
                        left -= n;
                    }
                }
                SendVectors(fd, iov, used, 0);
            }
        }
        finally
        {
            Release(added);
        }
    }

    public override unsafe void WriteVectors(Libc.IoVec* vectors, int count)
    {
        int fd = AddRef(out bool added);
        try
        {
            SendVectors(fd, vectors, count, 0);
        }
        finally
        {
            Release(added);
        }
    }

    private int AddRef(out bool added)
    {
        added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            return (int)_socket.SafeHandle.DangerousGetHandle();
        }
        catch (ObjectDisposedException)
        {
            throw new IOException("The connection is closed.");
        }
    }

    private void Release(bool added)
    {
        if (added)
            _socket.SafeHandle.DangerousRelease();
    }

    private static unsafe void SendZeroes(int fd, long count)
    {
        byte* zeroes = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Zeroes));
        Libc.IoVec* iov = stackalloc Libc.IoVec[64];
        while (count > 0)
        {
            int used = 0;
            while (count > 0 && used < 64)
            {
                int n = (int)Math.Min(count, Zeroes.Length);
                iov[used++] = new Libc.IoVec { Base = (nint)zeroes, Length = (nuint)n };
                count -= n;
            }
            SendVectors(fd, iov, used, count > 0 ? Libc.MSG_MORE : 0);
        }
    }

    /// <summary>Sends every byte the vectors describe (consuming them), through partial sends and a non-blocking descriptor.</summary>
    private static unsafe void SendVectors(int fd, Libc.IoVec* iov, int count, int flags)
    {
        int first = 0;
        while (first < count && iov[first].Length == 0)
            first++;
        while (first < count)
        {
            var msg = new Libc.MsgHdr { Iov = iov + first, IovLength = (nuint)(count - first) };
            nint sent = Libc.sendmsg(fd, &msg, Libc.MSG_NOSIGNAL | flags);
            if (sent < 0)
            {
                RetryOrThrow(fd, Libc.LastErrno, "send");
                continue;
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
            while (first < count && iov[first].Length == 0)
                first++;
        }
    }

    /// <summary>
    /// Returns when the failed send may be retried: at once after a signal, or, when the runtime
    /// made the descriptor non-blocking and the send buffer is full, once there is room again.
    /// </summary>
    private static unsafe void RetryOrThrow(int fd, int errno, string operation)
    {
        if (errno == Libc.EINTR)
            return;
        if (errno != Libc.EAGAIN)
            throw new IOException($"{operation} failed: {Libc.StrError(errno)}", errno);
        var pfd = new Libc.PollFd { Fd = fd, Events = Libc.POLLOUT };
        Libc.Poll(&pfd, 1, 1000);
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
