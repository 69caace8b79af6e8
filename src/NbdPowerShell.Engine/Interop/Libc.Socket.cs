using System.Runtime.InteropServices;

namespace NbdPowerShell.Engine.Interop;

internal static partial class Libc
{
    public const int MSG_NOSIGNAL = 0x4000;
    public const short POLLOUT = 0x004;

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
    public static unsafe partial int poll(PollFd* fds, nuint nfds, int timeout);
}
