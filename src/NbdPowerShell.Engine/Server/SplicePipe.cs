using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// A pipe owned by one worker thread that moves file pages to a socket without copying them:
/// splice file → pipe before the reply lock is taken (so a read that waits for the disk holds up
/// no other reply), then pipe → socket under it. The pipe is enlarged to 1 MiB where the system
/// allows, so a 1 MiB read goes to the socket in one call instead of sixteen. Used for peers on
/// other hosts only by default (see <see cref="FileReadSplicing"/>).
/// </summary>
internal sealed class SplicePipe : IDisposable
{
    private const int PreferredCapacity = 1 << 20;

    [ThreadStatic]
    private static SplicePipe? t_current;

    private int _read = -1, _write = -1;

    private SplicePipe() => Open();

    public int Capacity { get; private set; }

    /// <summary>Bytes spliced in and not yet sent.</summary>
    public int Buffered { get; set; }

    public int ReadEnd => _read;

    /// <summary>The calling thread's pipe, created on first use.</summary>
    public static SplicePipe ForThisThread() => t_current ??= new SplicePipe();

    /// <summary>Closes the calling thread's pipe; worker threads call it when they end.</summary>
    public static void ReleaseThisThread()
    {
        t_current?.Dispose();
        t_current = null;
    }

    /// <summary>
    /// Splices up to <paramref name="count"/> bytes of the file at <paramref name="offset"/> into the
    /// pipe (as much as fits); returns how many, 0 at the end of the file (the pipe was empty). File errors surface as
    /// StorageException, before anything was sent, so the request still gets an error reply.
    /// </summary>
    public unsafe int Fill(int file, long offset, int count)
    {
        int want = Math.Min(count, Capacity - Buffered);
        int done = 0;
        while (done < want)
        {
            long at = offset + done;
            // Non-blocking on the pipe side only: a pipe holds 256 pages, not 1 MiB of bytes, and a
            // range that starts mid-page leaves the last pages' worth without a slot. The file side
            // still blocks on the disk, which is what filling outside the reply lock is for.
            nint n = Libc.Splice(file, &at, _write, null, (nuint)(want - done), Libc.SPLICE_F_MOVE | Libc.SPLICE_F_NONBLOCK);
            if (n > 0)
            {
                done += (int)n;
                continue;
            }
            if (n == 0)
                break; // end of file
            int errno = Libc.LastErrno;
            if (errno == Libc.EINTR)
                continue;
            if (errno == Libc.EAGAIN && done + Buffered > 0)
                break; // the pipe is full
            Reset();
            throw StorageException.FromErrno(errno, "splice from file");
        }
        Buffered += done;
        return done;
    }

    /// <summary>Empties the pipe by replacing it (after a failed send its content is stale).</summary>
    public void Reset()
    {
        Close();
        Open();
    }

    public void Dispose() => Close();

    private unsafe void Open()
    {
        int* fds = stackalloc int[2];
        if (Libc.Pipe2(fds, Libc.O_CLOEXEC_PIPE) != 0)
            throw new IOException($"pipe2 failed: {Libc.StrError(Libc.LastErrno)}");
        _read = fds[0];
        _write = fds[1];
        // Fails for users over their pipe-buffer quota; the default 64 KiB still works, in more calls.
        Libc.Fcntl(_write, Libc.F_SETPIPE_SZ, PreferredCapacity);
        int capacity = Libc.Fcntl(_write, Libc.F_GETPIPE_SZ, 0);
        Capacity = capacity > 0 ? capacity : 64 * 1024;
        Buffered = 0;
    }

    private void Close()
    {
        if (_read >= 0)
            Libc.Close(_read);
        if (_write >= 0)
            Libc.Close(_write);
        _read = _write = -1;
        Buffered = 0;
    }
}
