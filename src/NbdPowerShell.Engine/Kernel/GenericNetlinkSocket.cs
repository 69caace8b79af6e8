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
    public const ushort CTRL_ATTR_MCAST_GROUPS = 7;
    public const ushort CTRL_ATTR_MCAST_GRP_NAME = 1;
    public const ushort CTRL_ATTR_MCAST_GRP_ID = 2;

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
    public ushort? ResolveFamily(string name) => DescribeFamily(name)?.Id;

    /// <summary>The id and multicast groups (name → group id) of a family, or null when no such family is registered.</summary>
    public (ushort Id, IReadOnlyDictionary<string, uint> Groups)? DescribeFamily(string name)
    {
        uint seq = NextSequence();
        var request = new NetlinkMessageBuilder(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1)
            .String(CTRL_ATTR_FAMILY_NAME, name).ToArray();
        List<byte[]> replies;
        try { replies = Transact(request, seq); }
        catch (NetlinkException e) when (e.Errno == Libc.ENOENT) { return null; }
        return ParseFamily(replies);
    }

    /// <summary>Reads CTRL_ATTR_FAMILY_ID and CTRL_ATTR_MCAST_GROUPS → item* → {GRP_NAME, GRP_ID} from GETFAMILY replies.</summary>
    public static (ushort Id, IReadOnlyDictionary<string, uint> Groups)? ParseFamily(IEnumerable<byte[]> payloads)
    {
        ushort? id = null;
        var groups = new Dictionary<string, uint>(StringComparer.Ordinal);
        foreach (var payload in payloads)
            foreach (var attr in NetlinkAttribute.Parse(payload.AsSpan(NetlinkMessageBuilder.GenlHeaderSize)))
            {
                if (attr.Type == CTRL_ATTR_FAMILY_ID) id = attr.GetU16();
                else if (attr.Type == CTRL_ATTR_MCAST_GROUPS)
                    foreach (var item in attr.GetNested())
                    {
                        string? groupName = null;
                        uint? groupId = null;
                        foreach (var field in item.GetNested())
                        {
                            if (field.Type == CTRL_ATTR_MCAST_GRP_NAME) groupName = field.GetString();
                            else if (field.Type == CTRL_ATTR_MCAST_GRP_ID) groupId = field.GetU32();
                        }
                        if (groupName is not null && groupId is uint g) groups[groupName] = g;
                    }
            }
        return id is ushort found ? (found, groups) : null;
    }

    /// <summary>Subscribes this socket to a multicast group (NETLINK_ADD_MEMBERSHIP).</summary>
    public unsafe void JoinGroup(uint group)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        if (Libc.SetSockOpt(_fd, Libc.SOL_NETLINK, Libc.NETLINK_ADD_MEMBERSHIP, &group, sizeof(uint)) < 0)
            throw new NetlinkException(Libc.LastErrno, "setsockopt(NETLINK_ADD_MEMBERSHIP)");
    }

    /// <summary>
    /// Waits up to <paramref name="timeout"/> for unsolicited messages (multicast notifications) and returns their
    /// type and payload (genlmsghdr + attributes). <c>Overrun</c> is true when the kernel dropped messages because the
    /// receive buffer was full (ENOBUFS): the caller must assume it missed some.
    /// </summary>
    public unsafe (List<(ushort Type, byte[] Payload)> Messages, bool Overrun) ReceiveNotifications(TimeSpan timeout, byte[] buffer)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        var messages = new List<(ushort, byte[])>();
        var pfd = new Libc.PollFd { Fd = _fd, Events = Libc.POLLIN };
        int ready = Libc.Poll(&pfd, 1, (int)Math.Clamp(timeout.TotalMilliseconds, 0, int.MaxValue));
        if (ready < 0 && Libc.LastErrno == Libc.EINTR) return (messages, false);
        if (ready < 0) throw new NetlinkException(Libc.LastErrno, "poll(netlink)");
        if (ready == 0) return (messages, false);
        nint got;
        fixed (byte* p = buffer) got = Libc.Recv(_fd, p, (nuint)buffer.Length, 0);
        if (got < 0)
        {
            int errno = Libc.LastErrno;
            if (errno == Libc.ENOBUFS) return (messages, true);
            if (errno is Libc.EINTR or Libc.EAGAIN) return (messages, false);
            throw new NetlinkException(errno, "recv(netlink)");
        }
        messages.AddRange(SplitMessages(buffer.AsSpan(0, (int)got)));
        return (messages, false);
    }

    /// <summary>Splits a datagram into its netlink messages: (nlmsg_type, body after the 16-byte nlmsghdr).</summary>
    public static List<(ushort Type, byte[] Payload)> SplitMessages(ReadOnlySpan<byte> datagram)
    {
        var result = new List<(ushort, byte[])>();
        int offset = 0;
        while (offset + NetlinkMessageBuilder.HeaderSize <= datagram.Length)
        {
            var span = datagram[offset..];
            int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(span);
            ushort type = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
            if (length < NetlinkMessageBuilder.HeaderSize || length > span.Length) break;
            result.Add((type, span[NetlinkMessageBuilder.HeaderSize..length].ToArray()));
            offset += NetlinkMessageBuilder.Align(length);
        }
        return result;
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
