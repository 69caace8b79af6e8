using NbdPowerShell.Engine.Kernel;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

public class NetlinkMessageTests
{
    private static byte[] Hex(string s) => Convert.FromHexString(s.Replace(" ", "").Replace("|", ""));

    [Fact]
    public void Disconnect_is_header_genl_header_and_index()
    {
        var bytes = NbdNetlinkFamily.BuildDisconnect(familyId: 0x1a, sequence: 7, index: 3);
        Assert.Equal(Hex(
            "1c000000 1a00 0500 07000000 00000000" + // nlmsghdr: len 28, type, REQUEST|ACK, seq, pid
            "02 01 0000" +                            // genlmsghdr: CMD_DISCONNECT, version 1
            "0800 0100 03000000"),                    // INDEX u32
            bytes);
    }

    [Fact]
    public void Connect_encodes_u64s_padded_string_and_nested_sockets()
    {
        var bytes = NbdNetlinkFamily.BuildConnect(0x1a, 9, new NbdNetlinkFamily.ConnectRequest
        {
            SocketFds = [5, 6],
            SizeBytes = 0x100000,
            BlockSizeBytes = 4096,
            ServerFlags = 0x10d,
            TimeoutSeconds = 5,
            BackendIdentifier = "nbd://h/e",
        });
        Assert.Equal(Hex(
            "7c000000 1a00 0500 09000000 00000000" +
            "01 01 0000" +
            "0c00 0200 0000100000000000" +            // SIZE_BYTES
            "0c00 0300 0010000000000000" +            // BLOCK_SIZE_BYTES
            "0c00 0500 0d01000000000000" +            // SERVER_FLAGS
            "0c00 0400 0500000000000000" +            // TIMEOUT
            "0c00 0600 0000000000000000" +            // CLIENT_FLAGS
            "0e00 0a00 6e62643a2f2f682f6500 0000" +   // BACKEND_IDENTIFIER "nbd://h/e\0", len 14, padded to 16
            "1c00 0780" +                             // SOCKETS (NLA_F_NESTED), len 28
            "0c00 0180 0800 0100 05000000" +          //   SOCK_ITEM { SOCK_FD 5 }
            "0c00 0180 0800 0100 06000000"),          //   SOCK_ITEM { SOCK_FD 6 }
            bytes);
        Assert.Equal(0, bytes.Length % 4);
    }

    [Fact]
    public void Connect_with_index_and_dead_timeout_puts_them_in()
    {
        var bytes = NbdNetlinkFamily.BuildConnect(0x1a, 1, new NbdNetlinkFamily.ConnectRequest
        {
            Index = 4, SocketFds = [3], SizeBytes = 512, DeadConnTimeoutSeconds = 30, ClientFlags = 2,
        });
        var attrs = NetlinkAttribute.Parse(bytes.AsSpan(20));
        Assert.Equal(new ushort[] { 1, 2, 5, 8, 6, 7 }, attrs.Select(a => a.Type));
        Assert.Equal(4u, attrs[0].GetU32());
        Assert.Equal(30ul, attrs.Single(a => a.Type == 8).GetU64());
        Assert.Equal(2ul, attrs.Single(a => a.Type == 6).GetU64());
        var item = Assert.Single(attrs[^1].GetNested());
        Assert.Equal(3u, Assert.Single(item.GetNested()).GetU32());
    }

    [Fact]
    public void Status_reply_device_list_is_parsed_with_or_without_nested_flag()
    {
        // genl header, then DEVICE_LIST { DEVICE_ITEM { INDEX 0, CONNECTED 1 }, DEVICE_ITEM { INDEX 5, CONNECTED 0 } }
        var payload = Hex(
            "05 01 0000" +
            "2c00 0980" +
            "1400 0180 0800 0100 00000000 0500 0200 01 000000" +
            "1400 0100 0800 0100 05000000 0500 0200 00 000000");
        var status = NbdNetlinkFamily.ParseStatus([payload]);
        Assert.Equal(2, status.Count);
        Assert.True(status[0]);
        Assert.False(status[5]);
    }

    [Fact]
    public void Attribute_parser_stops_at_a_truncated_attribute()
    {
        var attrs = NetlinkAttribute.Parse(Hex("0800 0100 01000000 ff00 0200 00"));
        Assert.Single(attrs);
    }

    [Fact]
    public void Family_lookup_request_is_a_ctrl_getfamily_with_the_name()
    {
        var bytes = new NetlinkMessageBuilder(0x10, 5, 1, 3, 1).String(2, "nbd").ToArray();
        Assert.Equal(Hex("1c000000 1000 0500 01000000 00000000 03 01 0000 0800 0200 6e626400"), bytes);
    }

    [Fact]
    public void Reconfigure_carries_index_backend_timeouts_and_sockets()
    {
        var bytes = NbdNetlinkFamily.BuildReconfigure(0x1a, 11, new NbdNetlinkFamily.ReconfigureRequest
        {
            Index = 2, BackendIdentifier = "nbd://h/e", TimeoutSeconds = 5, DeadConnTimeoutSeconds = 60, SocketFds = [7],
        });
        Assert.Equal(Hex(
            "54000000 1a00 0500 0b000000 00000000" +
            "03 01 0000" +                            // genlmsghdr: CMD_RECONFIGURE, version 1
            "0800 0100 02000000" +                    // INDEX
            "0e00 0a00 6e62643a2f2f682f6500 0000" +   // BACKEND_IDENTIFIER "nbd://h/e\0"
            "0c00 0400 0500000000000000" +            // TIMEOUT
            "0c00 0800 3c00000000000000" +            // DEAD_CONN_TIMEOUT
            "1000 0780" +                             // SOCKETS
            "0c00 0180 0800 0100 07000000"),          //   SOCK_ITEM { SOCK_FD 7 }
            bytes);
    }

    [Fact]
    public void Reconfigure_without_sockets_leaves_the_socket_list_out()
    {
        var bytes = NbdNetlinkFamily.BuildReconfigure(0x1a, 1, new NbdNetlinkFamily.ReconfigureRequest { Index = 9, TimeoutSeconds = 10 });
        var attrs = NetlinkAttribute.Parse(bytes.AsSpan(20));
        Assert.Equal(new ushort[] { 1, 4 }, attrs.Select(a => a.Type));
        Assert.Equal(9u, attrs[0].GetU32());
    }

    [Fact]
    public void Link_dead_notification_yields_its_index_and_other_commands_do_not()
    {
        Assert.Equal(3, NbdNetlinkFamily.ParseLinkDead(Hex("04 01 0000 0800 0100 03000000")));
        Assert.Null(NbdNetlinkFamily.ParseLinkDead(Hex("05 01 0000 0800 0100 03000000"))); // STATUS
        Assert.Null(NbdNetlinkFamily.ParseLinkDead(Hex("04 01 0000")));                    // no INDEX
        Assert.Null(NbdNetlinkFamily.ParseLinkDead(Hex("04 01")));                          // truncated header
    }

    [Fact]
    public void Family_reply_gives_the_id_and_the_multicast_groups()
    {
        // CTRL_CMD_NEWFAMILY: FAMILY_NAME "nbd", FAMILY_ID 0x1a, MCAST_GROUPS { 1 { GRP_NAME "nbd_mc_group", GRP_ID 5 } }
        var payload = Hex(
            "01 02 0000" +
            "0800 0200 6e626400" +
            "0600 0100 1a00 0000" +
            "2400 0780" +
            "2000 0180 1100 0100 6e62645f6d635f67726f757000 000000 0800 0200 05000000");
        var family = GenericNetlinkSocket.ParseFamily([payload]);
        Assert.NotNull(family);
        Assert.Equal(0x1a, family.Value.Id);
        Assert.Equal(5u, family.Value.Groups[NbdNetlinkFamily.MulticastGroupName]);
    }

    [Fact]
    public void A_datagram_is_split_into_its_messages()
    {
        // Two messages: a LINK_DEAD for nbd1 and one for nbd4, as the multicast socket may receive them together.
        var one = Hex("1c000000 1a00 0000 00000000 00000000 04 01 0000 0800 0100 01000000");
        var two = Hex("1c000000 1a00 0000 00000000 00000000 04 01 0000 0800 0100 04000000");
        var messages = GenericNetlinkSocket.SplitMessages([.. one, .. two]);
        Assert.Equal(2, messages.Count);
        Assert.All(messages, m => Assert.Equal(0x1a, m.Type));
        Assert.Equal([1, 4], messages.Select(m => NbdNetlinkFamily.ParseLinkDead(m.Payload)));
    }
}
