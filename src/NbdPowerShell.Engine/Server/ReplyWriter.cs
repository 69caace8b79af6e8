using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Serializes replies from concurrent workers onto one transport. Each reply (or structured chunk)
/// is written whole under the lock: header and data in one vectored send, or the header followed
/// by file pages spliced through a pipe, or the header and the memory store's chunks in one
/// vectored send, or a whole <see cref="ReplyBatch"/> of replies in one send.
/// </summary>
internal sealed class ReplyWriter : IReplySink
{
    private readonly NbdTransport _transport;
    private readonly object _lock = new();
    private readonly byte[] _header = new byte[32];
    private bool _failed;

    public ReplyWriter(NbdTransport transport, FileReadSplicing splicing)
    {
        _transport = transport;
        SpliceFiles = transport.ZeroCopy && splicing switch
        {
            FileReadSplicing.Always => true,
            FileReadSplicing.Never => false,
            _ => !transport.PeerIsLocal,
        };
    }

    public bool ZeroCopy => _transport.ZeroCopy;

    public bool SpliceFiles { get; }

    public void SimpleReply(ulong cookie, NbdError error, ReadOnlySpan<byte> data)
    {
        lock (_lock)
            Send(ReplyHeaders.Simple(_header, cookie, error), error == NbdError.None ? data : default);
    }

    /// <summary>
    /// The first part of the file is spliced into this thread's pipe before the lock, so waiting
    /// for the disk holds up no other reply, and a file error there (StorageException) still
    /// leaves room for an error reply.
    /// </summary>
    public void SimpleReplyFromFile(ulong cookie, int descriptor, long offset, int length)
    {
        var pipe = SplicePipe.ForThisThread();
        pipe.Fill(descriptor, offset, length);
        lock (_lock)
            SendFile(ReplyHeaders.Simple(_header, cookie, NbdError.None), pipe, descriptor, offset, length);
    }

    public void SimpleReplyGather(ulong cookie, ReadOnlySpan<MemorySegment> segments)
    {
        lock (_lock)
            SendGather(ReplyHeaders.Simple(_header, cookie, NbdError.None), segments);
    }

    public void DataChunk(ulong cookie, bool done, ulong offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
            Send(ReplyHeaders.Data(_header, cookie, done, offset, data.Length), data);
    }

    /// <summary>OFFSET_DATA chunk whose data comes from a file (spliced as in <see cref="SimpleReplyFromFile"/>).</summary>
    public void DataChunkFromFile(ulong cookie, bool done, ulong offset, int descriptor, int length)
    {
        var pipe = SplicePipe.ForThisThread();
        pipe.Fill(descriptor, (long)offset, length);
        lock (_lock)
            SendFile(ReplyHeaders.Data(_header, cookie, done, offset, length), pipe, descriptor, (long)offset, length);
    }

    public void DataChunkGather(ulong cookie, bool done, ulong offset, ReadOnlySpan<MemorySegment> segments, int length)
    {
        lock (_lock)
            SendGather(ReplyHeaders.Data(_header, cookie, done, offset, length), segments);
    }

    public void HoleChunk(ulong cookie, bool done, ulong offset, uint size)
    {
        lock (_lock)
            Send(ReplyHeaders.Hole(_header, cookie, done, offset, size), default);
    }

    public void ErrorChunk(ulong cookie, NbdError error)
    {
        lock (_lock)
            Send(ReplyHeaders.Error(_header, cookie, error), default);
    }

    public void BlockStatusChunk(ulong cookie, ReadOnlySpan<byte> descriptors)
    {
        lock (_lock)
            Send(ReplyHeaders.BlockStatus(_header, cookie, descriptors.Length), descriptors);
    }

    /// <summary>
    /// Sends whole replies gathered by a <see cref="ReplyBatch"/>: on a zero-copy transport the
    /// vectors (into the batch's pinned buffer and the memory store's chunks) in one sendmsg,
    /// otherwise <paramref name="contiguous"/>, which then holds every byte of them.
    /// </summary>
    public unsafe void SendBatch(Libc.IoVec* vectors, int count, ReadOnlySpan<byte> contiguous)
    {
        lock (_lock)
        {
            if (_failed)
                return;
            try
            {
                if (_transport.ZeroCopy)
                    _transport.WriteVectors(vectors, count);
                else
                    _transport.Write(contiguous, default);
            }
            catch (IOException)
            {
                Fail();
            }
        }
    }

    private void Send(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body)
    {
        if (_failed)
            return;
        try
        {
            _transport.Write(head, body);
        }
        catch (IOException)
        {
            Fail();
        }
    }

    private void SendFile(ReadOnlySpan<byte> head, SplicePipe pipe, int descriptor, long offset, int length)
    {
        try
        {
            if (!_failed)
            {
                _transport.WriteFile(head, pipe, descriptor, offset, length);
                return;
            }
        }
        catch (IOException)
        {
            Fail();
        }
        pipe.Reset(); // what is left in it belongs to a reply that will never be sent
    }

    private void SendGather(ReadOnlySpan<byte> head, ReadOnlySpan<MemorySegment> segments)
    {
        if (_failed)
            return;
        try
        {
            _transport.WriteGather(head, segments);
        }
        catch (IOException)
        {
            Fail();
        }
    }

    /// <summary>The client is gone: later replies are dropped, and the reader notices and tears the connection down.</summary>
    private void Fail()
    {
        _failed = true;
        _transport.Shutdown();
    }
}
