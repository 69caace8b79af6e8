using System.Net.Sockets;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// A stream over a connected socket that only makes blocking calls: its asynchronous methods run synchronously on
/// the caller's thread. Negotiation runs over it for connections that are served by dedicated threads afterwards
/// (<see cref="PipelinedConnection"/>). A single asynchronous socket call (one that has to wait) registers the
/// socket with the runtime's epoll thread for good; from then on every reply arriving on it wakes that thread,
/// which queues a thread-pool work item that finds nothing to do, and the woken pool workers spin. With many
/// small replies that cost more CPU than the I/O itself. A socket that never saw an asynchronous call is never
/// registered. Cancellation: the caller shuts the socket down (which ends a blocked call) and this stream then
/// throws <see cref="OperationCanceledException"/> for the cancelled token. Does not own the socket.
/// </summary>
internal sealed class BlockingSocketStream(Socket socket) : Stream
{
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer) => Receive(buffer, CancellationToken.None);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        Task.FromResult(Receive(buffer.AsSpan(offset, count), cancellationToken));

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        new(Receive(buffer.Span, cancellationToken));

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer) => Send(buffer, CancellationToken.None);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        Send(buffer.AsSpan(offset, count), cancellationToken);
        return Task.CompletedTask;
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Send(buffer.Span, cancellationToken);
        return ValueTask.CompletedTask;
    }

    private int Receive(Span<byte> buffer, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        int n;
        try { n = socket.Receive(buffer, SocketFlags.None); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            ct.ThrowIfCancellationRequested();
            throw new IOException(e.Message, e);
        }
        if (n == 0 && !buffer.IsEmpty)
            ct.ThrowIfCancellationRequested(); // the end came from our own shutdown, not the peer
        return n;
    }

    private void Send(ReadOnlySpan<byte> buffer, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        try
        {
            while (!buffer.IsEmpty)
                buffer = buffer[socket.Send(buffer, SocketFlags.None)..];
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            ct.ThrowIfCancellationRequested();
            throw new IOException(e.Message, e);
        }
    }
}
