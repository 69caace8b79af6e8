namespace NbdPowerShell.Engine.Interop;

internal static partial class Libc
{
    /// <summary>
    /// Clears O_NONBLOCK; false when fcntl failed. The runtime makes a socket non-blocking for good once it was
    /// used asynchronously, and its synchronous calls then wait through its event loop (a thread hop and an
    /// allocation per wait). The kernel wants blocking sockets, and so does a socket read by one dedicated thread.
    /// </summary>
    public static bool SetBlocking(System.Net.Sockets.Socket socket)
    {
        bool added = false;
        var handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            int flags = Fcntl(fd, F_GETFL, 0);
            return flags >= 0 && ((flags & O_NONBLOCK) == 0 || Fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0);
        }
        finally
        {
            if (added)
                handle.DangerousRelease();
        }
    }
}
