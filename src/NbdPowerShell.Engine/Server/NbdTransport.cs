using System.Net;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// The byte pipe under one NBD connection. One thread reads; many threads write, serialized by
/// the caller (<see cref="ReplyWriter"/>). Sends take a header and a body so sockets can put both
/// into one vectored send.
/// </summary>
internal abstract class NbdTransport : IDisposable
{
    public abstract EndPoint? RemoteEndPoint { get; }

    /// <summary>Reads at least one byte; returns 0 at end of stream.</summary>
    public abstract int Read(Span<byte> buffer);

    /// <summary>
    /// Reads into the vectors in order (a scatter read), at least one byte; returns 0 at end of stream.
    /// The memory the vectors describe must stay where it is for the call (pinned or fixed). Zero-copy
    /// transports fill several vectors in one receive; the others read into the first non-empty one.
    /// </summary>
    public virtual unsafe int ReadVectors(Interop.Libc.IoVec* vectors, int count)
    {
        for (int i = 0; i < count; i++)
        {
            if (vectors[i].Length != 0)
                return Read(new Span<byte>((void*)vectors[i].Base, (int)Math.Min(vectors[i].Length, int.MaxValue)));
        }
        return 0;
    }

    /// <summary>
    /// Bytes read from the peer so far, including those a TLS layer above consumed. The handshake
    /// deadline uses it to tell a client that stalls from one that is merely slow.
    /// </summary>
    public abstract long BytesReceived { get; }

    /// <summary>Sends head then body as one message.</summary>
    public abstract void Write(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body);

    /// <summary>
    /// True when <see cref="WriteFile"/> and <see cref="WriteGather"/> hand data to the kernel
    /// without a copy in user space (plain sockets). TLS has to encrypt in user space anyway, so
    /// it copies through <see cref="Write"/>.
    /// </summary>
    public virtual bool ZeroCopy => false;

    /// <summary>
    /// Sends head, then <paramref name="count"/> bytes of the file at <paramref name="offset"/>
    /// (zeroes past its end), of which the first <see cref="SplicePipe.Buffered"/> are already in the pipe.
    /// </summary>
    public virtual void WriteFile(ReadOnlySpan<byte> head, SplicePipe pipe, int descriptor, long offset, int count) =>
        throw new NotSupportedException("This transport copies; check ZeroCopy first.");

    /// <summary>The peer runs on this host (loopback, Unix socket, socket pair); see <see cref="FileReadSplicing"/>.</summary>
    public virtual bool PeerIsLocal => true;

    /// <summary>Sends head, then the segments in order (holes as zeroes), as one message.</summary>
    public virtual void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<MemorySegment> segments) =>
        throw new NotSupportedException("This transport copies; check ZeroCopy first.");

    /// <summary>Sends every byte the vectors describe, in order, as one message (zero-copy transports only; the vectors are consumed).</summary>
    public virtual unsafe void WriteVectors(Interop.Libc.IoVec* vectors, int count) =>
        throw new NotSupportedException("This transport copies; check ZeroCopy first.");

    /// <summary>Stops both directions so a blocked reader wakes up.</summary>
    public abstract void Shutdown();

    /// <summary>Sends FIN after everything already written; the peer can still be read from.</summary>
    public abstract void ShutdownSend();

    /// <summary>
    /// Reads and discards until the peer closes or <paramref name="timeout"/> passes. Closing a
    /// socket with unread bytes makes the kernel send RST, and an RST makes the peer's kernel drop
    /// replies it has received but not yet read.
    /// </summary>
    public abstract void DrainUntilClosed(TimeSpan timeout);

    public abstract void Dispose();
}
