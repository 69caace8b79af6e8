using System.Runtime.InteropServices;

namespace NbdPowerShell.Engine.Interop;

/// <summary>
/// Direct libc calls (LibraryImport, no Tmds.LibC). Split into partial files by area:
/// Libc.File.cs (storage), Libc.Socket.cs (server), Libc.Kernel.cs (attach).
/// </summary>
internal static partial class Libc
{
    private const string Lib = "libc";

    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ENOTSUP = 95;

    [LibraryImport(Lib, EntryPoint = "strerror")]
    private static partial nint strerror(int errnum);

    public static string StrError(int errno) => Marshal.PtrToStringUTF8(strerror(errno)) ?? $"errno {errno}";

    public static int LastErrno => Marshal.GetLastPInvokeError();
}
