using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Read-side buffer over a transport so that small headers don't each cost a syscall, while
/// payloads go straight from the socket into their destination.
/// </summary>
internal sealed class BufferedReader
{
    private readonly NbdTransport _transport;
    private readonly byte[] _buffer;
    private readonly bool _scatter;
    private int _start, _end;

    public BufferedReader(NbdTransport transport, int size = 64 * 1024)
    {
        _transport = transport;
        _buffer = new byte[size];
        // Transports that hand data to the kernel without a user-space copy also take it back that way.
        _scatter = transport.ZeroCopy;
    }

    /// <summary>
    /// While set, a receive into this reader's buffer asks for one request header at most. The
    /// connection sets it after a large WRITE: the next request is then likely another, and a
    /// buffer-sized receive would take the start of its payload too, which then has to be copied out
    /// of the buffer (up to 64 KiB per request, half of each 128 KiB write the kernel sends); with
    /// only the header buffered the whole payload is received in place.
    /// </summary>
    public bool HeaderAtATime { get; set; }

    private int ReceiveSize => HeaderAtATime ? Protocol.NbdLimits.RequestHeaderSize : _buffer.Length;

    /// <summary>Bytes already read from the transport but not consumed.</summary>
    public bool HasBufferedData => _start != _end;

    /// <summary>
    /// Runs before every read from the transport, which may wait for the peer: the connection
    /// sends the replies it has batched, so none waits on the client's next request.
    /// </summary>
    public Action? BeforeReceive { get; set; }

    /// <summary>Fills <paramref name="destination"/> or returns false if the stream ended before the first byte.</summary>
    public bool TryReadExactly(Span<byte> destination)
    {
        if (_start == _end && !destination.IsEmpty)
        {
            if (!Fill(ReceiveSize))
                return false;
        }
        ReadExactly(destination);
        return true;
    }

    public unsafe void ReadExactly(Span<byte> destination)
    {
        if (_scatter)
        {
            fixed (byte* d = destination)
            {
                var vector = new Libc.IoVec { Base = (nint)d, Length = (nuint)destination.Length };
                ReadExactly(&vector, 1);
            }
            return;
        }
        while (!destination.IsEmpty)
        {
            int buffered = _end - _start;
            if (buffered > 0)
            {
                int n = Math.Min(buffered, destination.Length);
                _buffer.AsSpan(_start, n).CopyTo(destination);
                _start += n;
                destination = destination[n..];
            }
            else if (destination.Length >= _buffer.Length / 2)
            {
                // Big payload: skip the copy through our buffer.
                BeforeReceive?.Invoke();
                int n = _transport.Read(destination);
                if (n == 0)
                    throw new EndOfStreamException("The peer closed the connection mid-message.");
                destination = destination[n..];
            }
            else if (!Fill(_buffer.Length))
            {
                throw new EndOfStreamException("The peer closed the connection mid-message.");
            }
        }
    }

    /// <summary>
    /// Fills the memory the vectors describe, in order (they are consumed; the memory must not move
    /// during the call). What is buffered is copied; the rest is received straight into place, on a
    /// transport that reads vectors with this reader's own buffer as one more vector, so the bytes
    /// after the payload (the next request) arrive in the same receive and nothing is copied twice.
    /// </summary>
    public unsafe void ReadExactly(Libc.IoVec* vectors, int count)
    {
        int first = 0;
        while (first < count)
        {
            if (vectors[first].Length == 0)
            {
                first++;
                continue;
            }
            int buffered = _end - _start;
            if (buffered > 0)
            {
                int n = (int)Math.Min((nuint)buffered, vectors[first].Length);
                _buffer.AsSpan(_start, n).CopyTo(new Span<byte>((void*)vectors[first].Base, n));
                _start += n;
                vectors[first].Base += n;
                vectors[first].Length -= (nuint)n;
                continue;
            }
            if (!_scatter)
            {
                ReadExactly(new Span<byte>((void*)vectors[first].Base, (int)vectors[first].Length));
                vectors[first].Length = 0;
                continue;
            }
            ReceiveInto(vectors + first, Math.Min(count - first, MaxVectors - 1));
        }
    }

    /// <summary>Most vectors one receive takes, this reader's buffer included.</summary>
    private const int MaxVectors = 64;

    /// <summary>One receive into the vectors (consumed by what arrived) and, after them, this reader's empty buffer.</summary>
    private unsafe void ReceiveInto(Libc.IoVec* vectors, int count)
    {
        Libc.IoVec* all = stackalloc Libc.IoVec[count + 1];
        for (int i = 0; i < count; i++)
            all[i] = vectors[i];
        BeforeReceive?.Invoke();
        int n;
        fixed (byte* b = _buffer)
        {
            all[count] = new Libc.IoVec { Base = (nint)b, Length = (nuint)ReceiveSize };
            n = _transport.ReadVectors(all, count + 1);
        }
        if (n == 0)
            throw new EndOfStreamException("The peer closed the connection mid-message.");
        nuint got = (nuint)n;
        for (int i = 0; i < count && got > 0; i++)
        {
            nuint take = Math.Min(got, vectors[i].Length);
            vectors[i].Base += (nint)take;
            vectors[i].Length -= take;
            got -= take;
        }
        // What came after the payload is the start of the next request: it sits in the buffer now.
        _start = 0;
        _end = (int)got;
    }

    /// <summary>Reads and discards <paramref name="count"/> bytes (payloads of rejected requests).</summary>
    public void Skip(long count)
    {
        while (count > 0)
        {
            if (_start == _end && !Fill(_buffer.Length))
                throw new EndOfStreamException("The peer closed the connection mid-message.");
            int n = (int)Math.Min(count, _end - _start);
            _start += n;
            count -= n;
        }
    }

    /// <summary>
    /// One receive into the empty buffer. Only a request header is read with <see cref="ReceiveSize"/>:
    /// the rest of a payload or one being drained takes whatever has arrived, so neither goes 28 bytes a call.
    /// </summary>
    private bool Fill(int size)
    {
        BeforeReceive?.Invoke();
        _start = 0;
        _end = _transport.Read(_buffer.AsSpan(0, size));
        return _end > 0;
    }
}
