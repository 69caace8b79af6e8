using System.Net.Sockets;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// Our own descriptor (a close-on-exec duplicate) of a socket we gave the kernel for a device. It is never read or
/// written; it only lets us see what the kernel does with the socket:
/// <list type="bullet">
/// <item>the kernel shuts a socket down both ways when it marks it dead (nbd_mark_nsock_dead), which shows as POLLHUP
/// here, so we know which of our sockets died and how many need replacing;</item>
/// <item>when the kernel takes a socket (CONNECT or RECONFIGURE) on a device with a request timeout, it sets the socket's
/// send timeout to that timeout (nbd_start_device, nbd_reconnect_socket). A socket that still has no send timeout after
/// RECONFIGURE was not taken: the kernel had no dead socket to replace and silently ignored it.</item>
/// </list>
/// </summary>
internal sealed class KernelSocketWatch : IDisposable
{
    private int _fd;

    private KernelSocketWatch(int fd, string server)
    {
        _fd = fd;
        Server = server;
    }

    /// <summary>The NBD URI of the server at the other end.</summary>
    public string Server { get; }

    /// <summary>Duplicates the socket's descriptor (close-on-exec, so child processes never hold it).</summary>
    public static KernelSocketWatch Watch(Socket socket, string server)
    {
        int fd = Libc.Fcntl((int)socket.SafeHandle.DangerousGetHandle(), Libc.F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
        {
            int errno = Libc.LastErrno;
            throw new SocketException(errno, $"cannot duplicate a socket descriptor: {Libc.StrError(errno)}");
        }
        return new KernelSocketWatch(fd, server);
    }

    /// <summary>True once the socket is shut down both ways or in error: the kernel has marked it dead (or is about to).</summary>
    public unsafe bool IsDead
    {
        get
        {
            if (_fd < 0) return true;
            // No events asked for: poll still reports POLLHUP and POLLERR, and never consumes anything.
            var pfd = new Libc.PollFd { Fd = _fd, Events = 0 };
            int ready = Libc.Poll(&pfd, 1, 0);
            return ready > 0 && (pfd.Revents & (Libc.POLLHUP | Libc.POLLERR)) != 0;
        }
    }

    /// <summary>True when the kernel has taken the socket (it then carries the device's request timeout as send timeout).</summary>
    public unsafe bool IsTakenByKernel
    {
        get
        {
            if (_fd < 0) return false;
            long* timeval = stackalloc long[2];
            uint length = 2 * sizeof(long);
            if (Libc.GetSockOpt(_fd, Libc.SOL_SOCKET, Libc.SO_SNDTIMEO, timeval, &length) < 0) return false;
            return timeval[0] != 0 || timeval[1] != 0;
        }
    }

    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0) Libc.Close(fd);
    }
}
