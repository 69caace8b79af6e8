namespace NbdPowerShell.Engine.Storage;

/// <summary>A storage call failed with a Linux errno; the server turns it into the matching NBD error.</summary>
public sealed class StorageException : IOException
{
    public StorageException(int errno, string message) : base(message) => Errno = errno;

    public int Errno { get; }

    public static StorageException FromErrno(int errno, string operation) =>
        new(errno, $"{operation} failed: {Interop.Libc.StrError(errno)} (errno {errno})");
}
