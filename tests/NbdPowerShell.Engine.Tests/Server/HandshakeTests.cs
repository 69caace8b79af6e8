using System.Buffers.Binary;
using System.Text;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Tests.TestSupport;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

public class HandshakeTests
{
    private static async Task<TestServer> ServerWith(params string[] names)
    {
        // The default handshake deadline (30 s): a short one could expire while a loaded machine runs a test's
        // negotiation. The deadline itself is tested with its own server below.
        var server = new TestServer();
        foreach (var n in names)
            server.Add(n, new ArrayBlockStore(1 << 20), description: $"the {n} disk");
        await Task.CompletedTask;
        return server;
    }

    [Fact]
    public async Task Greeting_offers_fixed_newstyle_and_no_zeroes()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        var flags = c.Greet();
        Assert.Equal(ServerHandshakeFlags.FixedNewstyle | ServerHandshakeFlags.NoZeroes, flags);
    }

    [Fact]
    public async Task Unknown_client_flags_drop_the_connection()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet((ClientHandshakeFlags)0x80 | ClientHandshakeFlags.FixedNewstyle);
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Unknown_option_gets_ERR_UNSUP_and_the_connection_stays_in_sync()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption((NbdOption)0x7654321, new byte[] { 1, 2, 3 });
        var reply = c.ReadOptionReply();
        Assert.Equal((NbdOption)0x7654321, reply.Option);
        Assert.Equal(NbdOptionReplyType.ErrUnsupported, reply.Type);
        var (size, _) = GoAfterGreet(c, "a");
        Assert.Equal(1UL << 20, size);
    }

    private static (ulong, TransmissionFlags) GoAfterGreet(RawNbdClient c, string name)
    {
        c.SendOption(NbdOption.Go, RawNbdClient.InfoData(name));
        var replies = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.Ack, replies[^1].Type);
        var info = replies[0].Data;
        return (BinaryPrimitives.ReadUInt64BigEndian(info.AsSpan(2)), (TransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(info.AsSpan(10)));
    }

    [Fact]
    public async Task List_returns_every_export_with_its_description()
    {
        await using var server = await ServerWith("alpha", "beta");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.List, default);
        var replies = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.Ack, replies[^1].Type);
        var names = replies.Where(r => r.Type == NbdOptionReplyType.Server).Select(r =>
        {
            int len = (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data);
            return (Encoding.UTF8.GetString(r.Data, 4, len), Encoding.UTF8.GetString(r.Data, 4 + len, r.Data.Length - 4 - len));
        }).ToList();
        Assert.Equal(new[] { ("alpha", "the alpha disk"), ("beta", "the beta disk") }, names);
    }

    [Fact]
    public async Task List_with_data_is_invalid()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.List, new byte[] { 0 });
        Assert.Equal(NbdOptionReplyType.ErrInvalid, c.ReadOptionReply().Type);
    }

    [Fact]
    public async Task Info_reports_the_real_size_name_description_and_block_size()
    {
        await using var server = await ServerWith("disk");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.Info, RawNbdClient.InfoData("disk", NbdInfoType.Name, NbdInfoType.Description, NbdInfoType.BlockSize));
        var replies = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.Ack, replies[^1].Type);
        var byType = replies.Where(r => r.Type == NbdOptionReplyType.Info)
            .ToDictionary(r => (NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(r.Data), r => r.Data);
        Assert.Equal(1UL << 20, BinaryPrimitives.ReadUInt64BigEndian(byType[NbdInfoType.Export].AsSpan(2)));
        Assert.Equal("disk", Encoding.UTF8.GetString(byType[NbdInfoType.Name].AsSpan(2)));
        Assert.Equal("the disk disk", Encoding.UTF8.GetString(byType[NbdInfoType.Description].AsSpan(2)));
        var bs = byType[NbdInfoType.BlockSize];
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(6)));
        Assert.Equal((uint)NbdLimits.MaxPayload, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(10)));
        // INFO leaves us in negotiation: GO still works and reports the same.
        var (size, _) = GoAfterGreet(c, "disk");
        Assert.Equal(1UL << 20, size);
    }

    [Fact]
    public async Task Go_for_unknown_export_is_ERR_UNKNOWN_and_negotiation_continues()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.Go, RawNbdClient.InfoData("nope"));
        var r = c.ReadOptionReply();
        Assert.Equal(NbdOptionReplyType.ErrUnknown, r.Type);
        Assert.Contains("nope", Encoding.UTF8.GetString(r.Data));
        GoAfterGreet(c, "a");
    }

    [Fact]
    public async Task Go_with_name_length_past_the_option_is_invalid()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        var data = RawNbdClient.InfoData("a");
        BinaryPrimitives.WriteUInt32BigEndian(data, 1000);
        c.SendOption(NbdOption.Go, data);
        Assert.Equal(NbdOptionReplyType.ErrInvalid, c.ReadOptionReply().Type);
        GoAfterGreet(c, "a");
    }

    [Fact]
    public async Task Export_name_enters_transmission_with_size_and_flags()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet(ClientHandshakeFlags.FixedNewstyle); // without NO_ZEROES: expect 124 zero bytes
        c.SendOption(NbdOption.ExportName, Encoding.UTF8.GetBytes("a"));
        var reply = c.ReadExactly(8 + 2 + 124);
        Assert.Equal(1UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
        Assert.All(reply.Skip(10), b => Assert.Equal(0, b));
        c.SendRequest(NbdCommand.Read, 0, 512);
        Assert.Equal(NbdError.None, c.ReadSimpleReply(512).Error);
    }

    [Fact]
    public async Task Export_name_for_unknown_export_hangs_up()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.ExportName, Encoding.UTF8.GetBytes("missing"));
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Empty_name_selects_the_default_export()
    {
        await using var server = await ServerWith("", "other");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        var (size, _) = c.Go("");
        Assert.Equal(1UL << 20, size);
    }

    [Fact]
    public async Task StartTls_without_tls_configured_is_ERR_POLICY()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.StartTls, default);
        Assert.Equal(NbdOptionReplyType.ErrPolicy, c.ReadOptionReply().Type);
        GoAfterGreet(c, "a");
    }

    [Fact]
    public async Task Abort_is_acknowledged_and_closed()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.Abort, default);
        Assert.Equal(NbdOptionReplyType.Ack, c.ReadOptionReply().Type);
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Bad_option_magic_hangs_up()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.List, default, magic: 0x1122334455667788);
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Oversized_option_is_drained_and_answered_with_ERR_TOO_BIG()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption((NbdOption)99, new byte[200_000]);
        Assert.Equal(NbdOptionReplyType.ErrTooBig, c.ReadOptionReply().Type);
        GoAfterGreet(c, "a");
    }

    [Fact]
    public async Task Absurd_option_length_hangs_up()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.Info, default, lengthOverride: 0x7FFFFFFF);
        Assert.True(c.WaitForClose());
    }

    [Fact]
    public async Task Silent_client_is_dropped_at_the_handshake_deadline()
    {
        var deadline = TimeSpan.FromSeconds(2);
        await using var server = new TestServer(new NbdServerOptions { HandshakeTimeout = deadline });
        server.Add("a", new ArrayBlockStore(1 << 20));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.ReadExactly(18);
        // Say nothing: the deadline must close us. The wait only bounds a server that never does.
        Assert.True(c.WaitForClose((int)(deadline + RawNbdClient.ReplyWait).TotalMilliseconds));
    }

    [Fact]
    public async Task Slow_client_that_keeps_sending_outlives_the_handshake_deadline()
    {
        // A starved machine makes a handshake slow without making it stall: the deadline must count
        // silence, not the handshake's length. Here one option takes about three deadlines to arrive.
        var deadline = TimeSpan.FromSeconds(2);
        await using var server = new TestServer(new NbdServerOptions { HandshakeTimeout = deadline });
        server.Add("a", new ArrayBlockStore(1 << 20));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        var option = new byte[16 + RawNbdClient.InfoData("a").Length];
        BinaryPrimitives.WriteUInt64BigEndian(option, NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), (uint)NbdOption.Info);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(option.Length - 16));
        RawNbdClient.InfoData("a").CopyTo(option.AsSpan(16));
        var gap = deadline / 8;
        Assert.True(gap * option.Length > deadline * 2, "the option must take longer than two deadlines");
        foreach (byte b in option)
        {
            c.Send(new[] { b });
            Thread.Sleep(gap);
        }
        var replies = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.Ack, replies[^1].Type);
    }

    [Fact]
    public async Task Structured_reply_then_meta_contexts_list_and_set()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        // SET before STRUCTURED_REPLY is invalid.
        c.SendOption(NbdOption.SetMetaContext, RawNbdClient.MetaContextData("a", "base:allocation"));
        Assert.Equal(NbdOptionReplyType.ErrInvalid, c.ReadOptionReply().Type);
        c.SendOption(NbdOption.StructuredReply, default);
        Assert.Equal(NbdOptionReplyType.Ack, c.ReadOptionReply().Type);
        c.SendOption(NbdOption.ListMetaContext, RawNbdClient.MetaContextData("a"));
        var list = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.MetaContext, list[0].Type);
        Assert.Equal("base:allocation", Encoding.UTF8.GetString(list[0].Data.AsSpan(4)));
        // Unknown namespaces are ignored; "base:" alone is not a valid SET query.
        c.SendOption(NbdOption.SetMetaContext, RawNbdClient.MetaContextData("a", "qemu:dirty-bitmap:x", "base:"));
        var none = c.ReadOptionReplies();
        Assert.Single(none);
        Assert.Equal(NbdOptionReplyType.Ack, none[0].Type);
        c.SendOption(NbdOption.SetMetaContext, RawNbdClient.MetaContextData("a", "base:allocation"));
        var set = c.ReadOptionReplies();
        Assert.Equal(NbdOptionReplyType.MetaContext, set[0].Type);
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32BigEndian(set[0].Data));
    }

    [Fact]
    public async Task Stopping_server_answers_new_options_with_ERR_SHUTDOWN()
    {
        var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        // StopAsync raises the stop flag before its first await: the next option is refused, no waiting needed.
        var stop = server.DisposeAsync().AsTask();
        Assert.True(server.Server.IsStopping);
        c.SendOption(NbdOption.List, default);
        var reply = c.ReadOptionReply();
        Assert.Equal(NbdOptionReplyType.ErrShutdown, reply.Type);
        await stop;
    }

    [Fact]
    public async Task Denied_client_gets_ERR_POLICY_for_a_restricted_export_and_does_not_see_it_listed()
    {
        await using var server = new TestServer();
        server.Server.AddExport(new ExportDefinition("secret", new ArrayBlockStore(4096)) { AllowedClients = AddressFilter.Parse(new[] { "10.0.0.0/8" }) });
        server.Add("open", new ArrayBlockStore(4096));
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.List, default);
        var listed = c.ReadOptionReplies().Where(r => r.Type == NbdOptionReplyType.Server).ToList();
        Assert.Single(listed);
        c.SendOption(NbdOption.Go, RawNbdClient.InfoData("secret"));
        Assert.Equal(NbdOptionReplyType.ErrPolicy, c.ReadOptionReply().Type);
    }

    [Fact]
    public async Task Connection_limit_per_export_is_ERR_POLICY_for_the_extra_client()
    {
        await using var server = new TestServer();
        server.Server.AddExport(new ExportDefinition("one", new ArrayBlockStore(4096)) { MaxConnections = 1 });
        using var first = RawNbdClient.Connect(server.TcpEndPoint);
        first.Go("one");
        using var second = RawNbdClient.Connect(server.TcpEndPoint);
        second.Greet();
        second.SendOption(NbdOption.Go, RawNbdClient.InfoData("one"));
        var r = second.ReadOptionReply();
        Assert.Equal(NbdOptionReplyType.ErrPolicy, r.Type);
        Assert.Contains("maximum", Encoding.UTF8.GetString(r.Data));
        // When the first leaves, the slot is free again.
        first.SendRequest(NbdCommand.Disconnect, 0, 0);
        Assert.True(first.WaitForClose());
        // The server frees the slot when it has closed its side, which may come after the client sees EOF.
        Assert.True(ProcessProbe.WaitUntil(() => server.Server.GetExport("one")!.Connections.Count == 0, TimeSpan.FromSeconds(30)));
        second.SendOption(NbdOption.Go, RawNbdClient.InfoData("one"));
        Assert.Equal(NbdOptionReplyType.Ack, second.ReadOptionReplies()[^1].Type);
    }

    [Fact]
    public async Task Export_names_longer_than_4096_bytes_are_invalid()
    {
        await using var server = await ServerWith("a");
        using var c = RawNbdClient.Connect(server.TcpEndPoint);
        c.Greet();
        c.SendOption(NbdOption.Info, RawNbdClient.InfoData(new string('x', 5000)));
        Assert.Equal(NbdOptionReplyType.ErrInvalid, c.ReadOptionReply().Type);
        c.SendOption(NbdOption.ListMetaContext, RawNbdClient.MetaContextData(new string('y', 4097)));
        Assert.Equal(NbdOptionReplyType.ErrInvalid, c.ReadOptionReply().Type);
        GoAfterGreet(c, "a");
    }
}
