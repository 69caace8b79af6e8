using System.Runtime.InteropServices;

namespace NbdPowerShell.Engine.Interop;

/// <summary>libc socket calls for AF_NETLINK, which System.Net.Sockets cannot address.</summary>
internal static partial class Libc
{
    public const int AF_NETLINK = 16;
    public const int SOCK_RAW = 3;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int NETLINK_GENERIC = 16;
    public const int MSG_TRUNC = 0x20;
    public const int ENOBUFS = 105;
    /// <summary>setsockopt level for netlink options (linux/socket.h).</summary>
    public const int SOL_NETLINK = 270;
    /// <summary>Joins a multicast group; the option value is the group id (u32).</summary>
    public const int NETLINK_ADD_MEMBERSHIP = 1;
    public const short POLLIN = 0x1;
    public const short POLLHUP = 0x10;

    [StructLayout(LayoutKind.Sequential)]
    public struct SockaddrNl
    {
        public ushort Family;
        public ushort Pad;
        public uint PortId;
        public uint Groups;
    }

    [LibraryImport(Lib, EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    public static unsafe partial int Bind(int fd, SockaddrNl* addr, int addrLen);

    [LibraryImport(Lib, EntryPoint = "send", SetLastError = true)]
    public static unsafe partial nint Send(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport(Lib, EntryPoint = "recv", SetLastError = true)]
    public static unsafe partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport(Lib, EntryPoint = "setsockopt", SetLastError = true)]
    public static unsafe partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static unsafe partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMs);
}
