using System.Runtime.InteropServices;

namespace NbdPowerShell.Engine.Interop;

internal static partial class Libc
{
    public const int EPIPE = 32;
    public const int MSG_NOSIGNAL = 0x4000;
    /// <summary>More data follows: the kernel holds a partial segment back instead of sending a small packet.</summary>
    public const int MSG_MORE = 0x8000;
    public const short POLLOUT = 0x004;
    public const short POLLERR = 0x008;
    public const int SOL_SOCKET = 1;
    /// <summary>SO_SNDTIMEO as x86_64 and arm64 define it (asm-generic; struct timeval of two longs).</summary>
    public const int SO_SNDTIMEO = 21;
    /// <summary>Most iovecs one sendmsg takes (UIO_MAXIOV).</summary>
    public const int IOV_MAX = 1024;

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public nint Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct MsgHdr
    {
        public nint Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public nint Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint sendmsg(int sockfd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint recvmsg(int sockfd, MsgHdr* msg, int flags);

    public const int ECONNABORTED = 103;
    public const int ECONNRESET = 104;

    public const int F_SETPIPE_SZ = 1031;
    public const int F_GETPIPE_SZ = 1032;
    public const int O_CLOEXEC_PIPE = 0x80000;
    public const uint SPLICE_F_MOVE = 1;
    public const uint SPLICE_F_NONBLOCK = 2;

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static unsafe partial int Pipe2(int* fds, int flags);

    /// <summary>Moves pages between a pipe and a file or socket without copying them; offsets may be null (pipes, sockets).</summary>
    [LibraryImport(Lib, EntryPoint = "splice", SetLastError = true)]
    public static unsafe partial nint Splice(int fdIn, long* offIn, int fdOut, long* offOut, nuint length, uint flags);

}

internal static partial class Libc
{
    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;

    [LibraryImport(Lib, EntryPoint = "socketpair", SetLastError = true)]
    private static unsafe partial int socketpair(int domain, int type, int protocol, int* sv);

    /// <summary>A connected pair of AF_UNIX stream sockets (close-on-exec), wrapped as .NET sockets.</summary>
    public static unsafe (System.Net.Sockets.Socket First, System.Net.Sockets.Socket Second) SocketPair()
    {
        int* sv = stackalloc int[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        {
            int errno = LastErrno;
            throw new System.Net.Sockets.SocketException(errno, $"socketpair failed: {StrError(errno)}");
        }
        return (Wrap(sv[0]), Wrap(sv[1]));

        static System.Net.Sockets.Socket Wrap(int fd) => new(new System.Net.Sockets.SafeSocketHandle(fd, ownsHandle: true));
    }
}
