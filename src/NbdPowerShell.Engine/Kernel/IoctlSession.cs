using System.Collections.Concurrent;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// One device attached through ioctls. NBD_DO_IT blocks for the life of the connection, so it runs on a
/// dedicated background thread of this process; when the process ends, the device disconnects.
/// </summary>
internal sealed class IoctlSession
{
    private static readonly ConcurrentDictionary<int, IoctlSession> Active = new();

    private readonly int _fd;
    private readonly object _fdLock = new();
    private bool _closed;
    private readonly Thread _thread;
    private volatile int _doItErrno = -1;

    public int Index { get; }
    /// <summary>Completed when DO_IT has returned and the device was cleared.</summary>
    public Task Completion => _done.Task;
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>errno of DO_IT once it returned (0 = clean disconnect), -1 while it runs.</summary>
    public int DoItErrno => _doItErrno;

    private IoctlSession(int index, int fd)
    {
        Index = index;
        _fd = fd;
        _thread = new Thread(Run) { IsBackground = true, Name = $"nbd{index} DO_IT" };
    }

    public static IoctlSession? Find(int index) => Active.TryGetValue(index, out var s) ? s : null;

    /// <summary>Configures the device (the qemu-nbd / nbd-client -L order) and starts DO_IT.</summary>
    public static IoctlSession Start(int index, string devicePath, int socketFd, long size, int blockSize, ulong serverFlags, bool readOnly, TimeSpan? timeout)
    {
        int fd = NbdIoctl.OpenDevice(devicePath, index);
        try
        {
            NbdIoctl.Call(fd, NbdIoctl.SET_BLKSIZE, (nuint)blockSize, "NBD_SET_BLKSIZE", index);
            NbdIoctl.Call(fd, NbdIoctl.SET_SIZE_BLOCKS, (nuint)(size / blockSize), "NBD_SET_SIZE_BLOCKS", index);
            NbdIoctl.Call(fd, NbdIoctl.CLEAR_SOCK, 0, "NBD_CLEAR_SOCK", index);
            NbdIoctl.Call(fd, NbdIoctl.SET_FLAGS, (nuint)serverFlags, "NBD_SET_FLAGS", index);
            if (readOnly) NbdIoctl.SetReadOnly(fd, true, index);
            if (timeout is { } t) NbdIoctl.Call(fd, NbdIoctl.SET_TIMEOUT, (nuint)Math.Max(1, (long)Math.Ceiling(t.TotalSeconds)), "NBD_SET_TIMEOUT", index);
            NbdIoctl.Call(fd, NbdIoctl.SET_SOCK, (nuint)socketFd, "NBD_SET_SOCK", index);
        }
        catch
        {
            Libc.Ioctl(fd, NbdIoctl.CLEAR_SOCK, 0);
            Libc.Close(fd);
            throw;
        }
        var session = new IoctlSession(index, fd);
        if (!Active.TryAdd(index, session))
        {
            Libc.Ioctl(fd, NbdIoctl.CLEAR_SOCK, 0);
            Libc.Close(fd);
            throw new NbdDeviceBusyException(index, $"/dev/nbd{index} already has an ioctl session in this process.");
        }
        session._thread.Start();
        return session;
    }

    private void Run()
    {
        try
        {
            int rc = Libc.Ioctl(_fd, NbdIoctl.DO_IT, 0);
            _doItErrno = rc < 0 ? Libc.LastErrno : 0;
            Libc.Ioctl(_fd, NbdIoctl.CLEAR_SOCK, 0);
        }
        finally
        {
            lock (_fdLock)
            {
                _closed = true;
                Libc.Close(_fd);
            }
            Active.TryRemove(new KeyValuePair<int, IoctlSession>(Index, this));
            _done.TrySetResult();
        }
    }

    /// <summary>NBD_DISCONNECT on our own fd: the kernel sends NBD_CMD_DISC and DO_IT returns.</summary>
    public void RequestDisconnect()
    {
        lock (_fdLock)
        {
            if (!_closed) Libc.Ioctl(_fd, NbdIoctl.DISCONNECT, 0);
        }
    }
}
