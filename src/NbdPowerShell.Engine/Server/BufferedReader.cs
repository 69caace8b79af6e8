namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Read-side buffer over a transport so that small headers don't each cost a syscall, while large
/// payloads go straight from the socket into their destination.
/// </summary>
internal sealed class BufferedReader
{
    private readonly NbdTransport _transport;
    private readonly byte[] _buffer;
    private int _start, _end;

    public BufferedReader(NbdTransport transport, int size = 64 * 1024)
    {
        _transport = transport;
        _buffer = new byte[size];
    }

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
            if (!Fill())
                return false;
        }
        ReadExactly(destination);
        return true;
    }

    public void ReadExactly(Span<byte> destination)
    {
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
            else if (!Fill())
            {
                throw new EndOfStreamException("The peer closed the connection mid-message.");
            }
        }
    }

    /// <summary>Reads and discards <paramref name="count"/> bytes (payloads of rejected requests).</summary>
    public void Skip(long count)
    {
        while (count > 0)
        {
            if (_start == _end && !Fill())
                throw new EndOfStreamException("The peer closed the connection mid-message.");
            int n = (int)Math.Min(count, _end - _start);
            _start += n;
            count -= n;
        }
    }

    private bool Fill()
    {
        BeforeReceive?.Invoke();
        _start = 0;
        _end = _transport.Read(_buffer);
        return _end > 0;
    }
}
