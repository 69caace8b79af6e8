using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace NbdPowerShell.Engine.Interop;

/// <summary>What the service needs beyond storage and sockets: durable configuration writes and the control socket's peer.</summary>
internal static partial class Libc
{
    public const int O_DIRECTORY = 0x10000; // 0200000
    private const int SO_PEERCRED = 17;

    [StructLayout(LayoutKind.Sequential)]
    public struct UCred
    {
        public int Pid;
        public uint Uid;
        public uint Gid;
    }

    [LibraryImport(Lib, EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(SafeFileHandle fd);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    private static unsafe partial int getsockopt(nint socket, int level, int name, void* value, ref uint length);

    /// <summary>The process at the other end of a connected Unix socket, as the kernel recorded it at connect (SO_PEERCRED).</summary>
    public static unsafe UCred PeerCredentials(System.Net.Sockets.Socket socket)
    {
        UCred cred;
        uint length = (uint)sizeof(UCred);
        if (getsockopt(socket.SafeHandle.DangerousGetHandle(), SOL_SOCKET, SO_PEERCRED, &cred, ref length) != 0)
        {
            int errno = LastErrno;
            throw new System.Net.Sockets.SocketException(errno, $"SO_PEERCRED failed: {StrError(errno)}");
        }
        return cred;
    }

    /// <summary>fsync of a directory, so a rename inside it survives a crash.</summary>
    public static void SyncDirectory(string directory)
    {
        int fd = Open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        if (fd < 0)
        {
            int errno = LastErrno;
            throw new IOException($"Cannot open {directory} to sync it: {StrError(errno)}");
        }
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (FSync(handle) != 0)
        {
            int errno = LastErrno;
            throw new IOException($"fsync of {directory} failed: {StrError(errno)}");
        }
    }
}
