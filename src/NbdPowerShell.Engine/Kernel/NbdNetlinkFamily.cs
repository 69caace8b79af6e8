namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// The kernel's generic netlink family "nbd" (linux/nbd-netlink.h, version 1): CONNECT, DISCONNECT, RECONFIGURE and
/// STATUS, and the LINK_DEAD notification of its multicast group. Message builders and parsers are static so tests
/// can check the bytes without a kernel.
/// </summary>
internal sealed class NbdNetlinkFamily : IDisposable
{
    public const string FamilyName = "nbd";
    /// <summary>NBD_GENL_MCAST_GROUP_NAME: the group LINK_DEAD is multicast to.</summary>
    public const string MulticastGroupName = "nbd_mc_group";
    public const byte Version = 1;

    public const byte CMD_CONNECT = 1;
    public const byte CMD_DISCONNECT = 2;
    public const byte CMD_RECONFIGURE = 3;
    /// <summary>Multicast by the kernel (with INDEX) when a connection dies by error or timeout, never for a requested disconnect.</summary>
    public const byte CMD_LINK_DEAD = 4;
    public const byte CMD_STATUS = 5;

    public const ushort ATTR_INDEX = 1;
    public const ushort ATTR_SIZE_BYTES = 2;
    public const ushort ATTR_BLOCK_SIZE_BYTES = 3;
    public const ushort ATTR_TIMEOUT = 4;
    public const ushort ATTR_SERVER_FLAGS = 5;
    public const ushort ATTR_CLIENT_FLAGS = 6;
    public const ushort ATTR_SOCKETS = 7;
    public const ushort ATTR_DEAD_CONN_TIMEOUT = 8;
    public const ushort ATTR_DEVICE_LIST = 9;
    public const ushort ATTR_BACKEND_IDENTIFIER = 10;

    public const ushort SOCK_ITEM = 1;
    public const ushort SOCK_FD = 1;
    public const ushort DEVICE_ITEM = 1;
    public const ushort DEVICE_INDEX = 1;
    public const ushort DEVICE_CONNECTED = 2;

    private readonly GenericNetlinkSocket _socket;
    private readonly ushort _familyId;

    private NbdNetlinkFamily(GenericNetlinkSocket socket, ushort familyId)
    {
        _socket = socket;
        _familyId = familyId;
    }

    /// <summary>Opens a netlink socket and resolves "nbd"; null when the family is not registered (module not loaded or too old).</summary>
    public static NbdNetlinkFamily? TryOpen()
    {
        var socket = GenericNetlinkSocket.Open();
        try
        {
            ushort? id = socket.ResolveFamily(FamilyName);
            if (id is null) { socket.Dispose(); return null; }
            return new NbdNetlinkFamily(socket, id.Value);
        }
        catch { socket.Dispose(); throw; }
    }

    public sealed record ConnectRequest
    {
        public int? Index { get; init; }
        public required IReadOnlyList<int> SocketFds { get; init; }
        public required long SizeBytes { get; init; }
        public long? BlockSizeBytes { get; init; }
        public ulong ServerFlags { get; init; }
        public ulong? TimeoutSeconds { get; init; }
        public ulong? DeadConnTimeoutSeconds { get; init; }
        public ulong ClientFlags { get; init; }
        public string? BackendIdentifier { get; init; }
    }

    public static byte[] BuildConnect(ushort familyId, uint sequence, ConnectRequest r)
    {
        var m = new NetlinkMessageBuilder(familyId, GenericNetlinkSocket.NLM_F_REQUEST | GenericNetlinkSocket.NLM_F_ACK, sequence, CMD_CONNECT, Version);
        if (r.Index is int index) m.U32(ATTR_INDEX, (uint)index);
        m.U64(ATTR_SIZE_BYTES, (ulong)r.SizeBytes);
        if (r.BlockSizeBytes is long bs) m.U64(ATTR_BLOCK_SIZE_BYTES, (ulong)bs);
        m.U64(ATTR_SERVER_FLAGS, r.ServerFlags);
        if (r.TimeoutSeconds is ulong t) m.U64(ATTR_TIMEOUT, t);
        if (r.DeadConnTimeoutSeconds is ulong d) m.U64(ATTR_DEAD_CONN_TIMEOUT, d);
        m.U64(ATTR_CLIENT_FLAGS, r.ClientFlags);
        if (!string.IsNullOrEmpty(r.BackendIdentifier)) m.String(ATTR_BACKEND_IDENTIFIER, r.BackendIdentifier);
        PutSockets(m, r.SocketFds);
        return m.ToArray();
    }

    /// <summary>SOCKETS → SOCK_ITEM* → SOCK_FD (u32), in the order given: the kernel adds (CONNECT) or places (RECONFIGURE) them in that order.</summary>
    private static void PutSockets(NetlinkMessageBuilder m, IReadOnlyList<int> fds)
    {
        int sockets = m.BeginNested(ATTR_SOCKETS);
        foreach (int fd in fds)
        {
            int item = m.BeginNested(SOCK_ITEM);
            m.U32(SOCK_FD, (uint)fd);
            m.EndNested(item);
        }
        m.EndNested(sockets);
    }

    /// <summary>
    /// NBD_CMD_RECONFIGURE. The kernel (drivers/block/nbd.c, nbd_genl_reconfigure) needs INDEX, and BACKEND_IDENTIFIER
    /// when the device was connected with one. Each fd in SOCKETS replaces the first socket the kernel has already
    /// marked dead; when none is dead the fd is not taken, the rest are ignored, and the call still succeeds.
    /// </summary>
    public sealed record ReconfigureRequest
    {
        public required int Index { get; init; }
        public string? BackendIdentifier { get; init; }
        public IReadOnlyList<int> SocketFds { get; init; } = [];
        public ulong? TimeoutSeconds { get; init; }
        public ulong? DeadConnTimeoutSeconds { get; init; }
    }

    public static byte[] BuildReconfigure(ushort familyId, uint sequence, ReconfigureRequest r)
    {
        var m = new NetlinkMessageBuilder(familyId, GenericNetlinkSocket.NLM_F_REQUEST | GenericNetlinkSocket.NLM_F_ACK, sequence, CMD_RECONFIGURE, Version);
        m.U32(ATTR_INDEX, (uint)r.Index);
        if (!string.IsNullOrEmpty(r.BackendIdentifier)) m.String(ATTR_BACKEND_IDENTIFIER, r.BackendIdentifier);
        if (r.TimeoutSeconds is ulong t) m.U64(ATTR_TIMEOUT, t);
        if (r.DeadConnTimeoutSeconds is ulong d) m.U64(ATTR_DEAD_CONN_TIMEOUT, d);
        if (r.SocketFds.Count > 0) PutSockets(m, r.SocketFds);
        return m.ToArray();
    }

    /// <summary>The device index of a LINK_DEAD notification (genlmsghdr + attributes), or null when it is something else.</summary>
    public static int? ParseLinkDead(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < NetlinkMessageBuilder.GenlHeaderSize || payload[0] != CMD_LINK_DEAD) return null;
        foreach (var attr in NetlinkAttribute.Parse(payload[NetlinkMessageBuilder.GenlHeaderSize..]))
            if (attr.Type == ATTR_INDEX && attr.Value.Length >= 4) return (int)attr.GetU32();
        return null;
    }

    public static byte[] BuildDisconnect(ushort familyId, uint sequence, int index) =>
        new NetlinkMessageBuilder(familyId, GenericNetlinkSocket.NLM_F_REQUEST | GenericNetlinkSocket.NLM_F_ACK, sequence, CMD_DISCONNECT, Version)
            .U32(ATTR_INDEX, (uint)index).ToArray();

    public static byte[] BuildStatus(ushort familyId, uint sequence, int? index)
    {
        var m = new NetlinkMessageBuilder(familyId, GenericNetlinkSocket.NLM_F_REQUEST | GenericNetlinkSocket.NLM_F_ACK, sequence, CMD_STATUS, Version);
        if (index is int i) m.U32(ATTR_INDEX, (uint)i);
        return m.ToArray();
    }

    /// <summary>Sends CONNECT and returns the device index the kernel chose (or confirmed).</summary>
    public int Connect(ConnectRequest request)
    {
        uint seq = _socket.NextSequence();
        var replies = _socket.Transact(BuildConnect(_familyId, seq, request), seq);
        foreach (var payload in replies)
            foreach (var attr in NetlinkAttribute.Parse(payload.AsSpan(NetlinkMessageBuilder.GenlHeaderSize)))
                if (attr.Type == ATTR_INDEX) return (int)attr.GetU32();
        return request.Index ?? throw new InvalidOperationException("The kernel accepted NBD_CMD_CONNECT but did not say which device it used.");
    }

    /// <summary>Sends RECONFIGURE; throws <see cref="NetlinkException"/> with the kernel's errno when it refuses.</summary>
    public void Reconfigure(ReconfigureRequest request)
    {
        uint seq = _socket.NextSequence();
        _socket.Transact(BuildReconfigure(_familyId, seq, request), seq);
    }

    public void Disconnect(int index)
    {
        uint seq = _socket.NextSequence();
        _socket.Transact(BuildDisconnect(_familyId, seq, index), seq);
    }

    /// <summary>Connected state of every nbd device (or just <paramref name="index"/>), from the kernel's view.</summary>
    public IReadOnlyDictionary<int, bool> Status(int? index = null)
    {
        uint seq = _socket.NextSequence();
        return ParseStatus(_socket.Transact(BuildStatus(_familyId, seq, index), seq));
    }

    /// <summary>Reads DEVICE_LIST → DEVICE_ITEM* → {DEVICE_INDEX u32, DEVICE_CONNECTED u8} from STATUS replies.</summary>
    public static IReadOnlyDictionary<int, bool> ParseStatus(IEnumerable<byte[]> payloads)
    {
        var result = new Dictionary<int, bool>();
        foreach (var payload in payloads)
            foreach (var list in NetlinkAttribute.Parse(payload.AsSpan(NetlinkMessageBuilder.GenlHeaderSize)))
            {
                if (list.Type != ATTR_DEVICE_LIST) continue;
                foreach (var item in list.GetNested())
                {
                    if (item.Type != DEVICE_ITEM) continue;
                    int? index = null;
                    bool connected = false;
                    foreach (var field in item.GetNested())
                    {
                        if (field.Type == DEVICE_INDEX) index = (int)field.GetU32();
                        else if (field.Type == DEVICE_CONNECTED) connected = field.GetU8() != 0;
                    }
                    if (index is int i) result[i] = connected;
                }
            }
        return result;
    }

    public void Dispose() => _socket.Dispose();
}
