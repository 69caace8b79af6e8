using System.Buffers.Binary;
using System.Diagnostics;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// A raw AF_NETLINK/NETLINK_GENERIC socket (System.Net.Sockets cannot address netlink). Requests are sent to
/// the kernel (port 0) with NLM_F_ACK, so every exchange ends with an NLMSG_ERROR carrying 0 or -errno.
/// </summary>
internal sealed class GenericNetlinkSocket : IDisposable
{
    public const ushort NLM_F_REQUEST = 0x01;
    public const ushort NLM_F_MULTI = 0x02;
    public const ushort NLM_F_ACK = 0x04;
    public const ushort NLM_F_DUMP = 0x300;
    public const ushort NLMSG_NOOP = 0x1;
    public const ushort NLMSG_ERROR = 0x2;
    public const ushort NLMSG_DONE = 0x3;
    /// <summary>GENL_ID_CTRL = NLMSG_MIN_TYPE: the controller family that resolves names to ids.</summary>
    public const ushort GENL_ID_CTRL = 0x10;
    public const byte CTRL_CMD_GETFAMILY = 3;
    public const ushort CTRL_ATTR_FAMILY_ID = 1;
    public const ushort CTRL_ATTR_FAMILY_NAME = 2;

    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);
    private int _fd;
    private uint _sequence = (uint)Environment.TickCount;

    private GenericNetlinkSocket(int fd) => _fd = fd;

    public static unsafe GenericNetlinkSocket Open()
    {
        int fd = Libc.Socket(Libc.AF_NETLINK, Libc.SOCK_RAW | Libc.SOCK_CLOEXEC, Libc.NETLINK_GENERIC);
        if (fd < 0) throw new NetlinkException(Libc.LastErrno, "socket(AF_NETLINK, NETLINK_GENERIC)");
        var addr = new Libc.SockaddrNl { Family = Libc.AF_NETLINK };
        if (Libc.Bind(fd, &addr, sizeof(Libc.SockaddrNl)) < 0)
        {
            int errno = Libc.LastErrno;
            Libc.Close(fd);
            throw new NetlinkException(errno, "bind(AF_NETLINK)");
        }
        return new GenericNetlinkSocket(fd);
    }

    public uint NextSequence() => unchecked(++_sequence);

    /// <summary>Resolves a generic netlink family name to its id, or null when no such family is registered.</summary>
    public ushort? ResolveFamily(string name)
    {
        uint seq = NextSequence();
        var request = new NetlinkMessageBuilder(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1)
            .String(CTRL_ATTR_FAMILY_NAME, name).ToArray();
        try
        {
            foreach (var payload in Transact(request, seq))
                foreach (var attr in NetlinkAttribute.Parse(payload.AsSpan(NetlinkMessageBuilder.GenlHeaderSize)))
                    if (attr.Type == CTRL_ATTR_FAMILY_ID) return attr.GetU16();
        }
        catch (NetlinkException e) when (e.Errno == Libc.ENOENT) { return null; }
        return null;
    }

    /// <summary>
    /// Sends one request and collects the payloads (genlmsghdr + attributes) of the replies until the ACK.
    /// Throws <see cref="NetlinkException"/> with the kernel's errno when the request failed.
    /// </summary>
    public unsafe List<byte[]> Transact(byte[] request, uint sequence, TimeSpan? timeout = null)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        fixed (byte* p = request)
        {
            nint sent;
            do sent = Libc.Send(_fd, p, (nuint)request.Length, 0);
            while (sent < 0 && Libc.LastErrno == Libc.EINTR);
            if (sent < 0) throw new NetlinkException(Libc.LastErrno, "send(netlink)");
        }

        var replies = new List<byte[]>();
        var buffer = new byte[64 * 1024];
        var clock = Stopwatch.StartNew();
        var limit = timeout ?? DefaultTimeout;
        while (true)
        {
            int remaining = (int)Math.Max(0, (limit - clock.Elapsed).TotalMilliseconds);
            var pfd = new Libc.PollFd { Fd = _fd, Events = Libc.POLLIN };
            int ready = Libc.Poll(&pfd, 1, remaining);
            if (ready < 0 && Libc.LastErrno == Libc.EINTR) continue;
            if (ready < 0) throw new NetlinkException(Libc.LastErrno, "poll(netlink)");
            if (ready == 0) throw new TimeoutException($"The kernel did not answer the netlink request within {limit.TotalSeconds:0.#} s.");
            nint got;
            fixed (byte* p = buffer) got = Libc.Recv(_fd, p, (nuint)buffer.Length, 0);
            if (got < 0)
            {
                if (Libc.LastErrno == Libc.EINTR) continue;
                throw new NetlinkException(Libc.LastErrno, "recv(netlink)");
            }
            bool finished = false;
            int offset = 0;
            while (offset + NetlinkMessageBuilder.HeaderSize <= got)
            {
                var span = buffer.AsSpan(offset, (int)got - offset);
                int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(span);
                ushort type = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
                uint seq = BinaryPrimitives.ReadUInt32LittleEndian(span[8..]);
                if (length < NetlinkMessageBuilder.HeaderSize || length > span.Length) break;
                var body = span[NetlinkMessageBuilder.HeaderSize..length];
                offset += NetlinkMessageBuilder.Align(length);
                if (seq != sequence) continue; // a stale answer to an earlier, timed-out request
                if (type == NLMSG_ERROR)
                {
                    // struct nlmsgerr: int error (0 = ACK), then the offending request header.
                    int error = BinaryPrimitives.ReadInt32LittleEndian(body);
                    if (error != 0) throw new NetlinkException(-error, "netlink request");
                    finished = true;
                }
                else if (type == NLMSG_DONE) finished = true;
                else if (type != NLMSG_NOOP) replies.Add(body.ToArray());
            }
            if (finished) return replies;
        }
    }

    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0) Libc.Close(fd);
    }
}

/// <summary>A netlink call failed with an errno (from the syscall or from the kernel's NLMSG_ERROR).</summary>
internal sealed class NetlinkException : Exception
{
    public int Errno { get; }
    public NetlinkException(int errno, string operation) : base($"{operation} failed: {Libc.StrError(errno)} (errno {errno})") => Errno = errno;
}
