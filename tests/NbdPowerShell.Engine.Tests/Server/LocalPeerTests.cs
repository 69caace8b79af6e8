using System.Net;
using System.Net.Sockets;
using System.Text;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Server;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Server;

/// <summary>
/// TCP connections between processes on this host leave a pacing congestion control (BBR): the server's side of
/// every accepted connection and the client's side of every connection it opens, and nothing else.
/// </summary>
public class LocalPeerTests
{
    [BbrFact]
    public void A_connection_with_bbr_moves_to_an_algorithm_that_does_not_pace()
    {
        var (server, client) = LoopbackPair();
        using var _ = server;
        using var __ = client;
        Set(server, "bbr");

        string? chosen = LocalPeer.AvoidPacing(server);

        Assert.Contains(chosen, new[] { "cubic", "reno" });
        Assert.Equal(chosen, Algorithm(server));
    }

    [Fact]
    public void A_connection_without_pacing_keeps_its_algorithm()
    {
        var (server, client) = LoopbackPair();
        using var _ = server;
        using var __ = client;
        Set(server, "reno"); // built into every kernel and always permitted

        Assert.Null(LocalPeer.AvoidPacing(server));
        Assert.Equal("reno", Algorithm(server));
    }

    [BbrFact]
    public void The_server_side_of_a_loopback_connection_does_not_pace()
    {
        var (server, client) = LoopbackPair();
        using var __ = client;
        Set(server, "bbr"); // as the system default would have it
        using var transport = new SocketTransport(server);

        Assert.True(transport.PeerIsLocal);
        Assert.NotEqual("bbr", Algorithm(server));
    }

    [DefaultBbrFact]
    public async Task A_client_connection_to_this_host_does_not_pace()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;

        using var socket = await NbdClient.OpenSocketAsync(NbdUri.ForTcp("127.0.0.1", port, "x"), CancellationToken.None);
        using var accepted = listener.Accept();

        Assert.Equal("bbr", Algorithm(accepted)); // the system default, untouched on a socket nobody adjusted
        Assert.NotEqual("bbr", Algorithm(socket));
    }

    [Theory]
    [InlineData("127.0.0.1", true)]
    [InlineData("127.3.4.5", true)]
    [InlineData("::1", true)]
    [InlineData("::ffff:127.0.0.1", true)]
    [InlineData("192.0.2.1", false)] // TEST-NET-1: documentation only, never a host's own address
    [InlineData("2001:db8::1", false)]
    public void Loopback_and_own_addresses_are_on_this_host_others_are_not(string address, bool local)
    {
        Assert.Equal(local, LocalPeer.IsOnThisHost(new IPEndPoint(IPAddress.Parse(address), 10809)));
    }

    [Fact]
    public void Unix_sockets_are_on_this_host()
    {
        Assert.True(LocalPeer.IsOnThisHost(new UnixDomainSocketEndPoint("/tmp/x.sock")));
        Assert.True(LocalPeer.IsOnThisHost(null));
    }

    internal static (Socket Server, Socket Client) LoopbackPair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        return (listener.Accept(), client);
    }

    internal static string Algorithm(Socket socket)
    {
        var name = new byte[16];
        int length = socket.GetRawSocketOption(6, 13, name); // IPPROTO_TCP, TCP_CONGESTION
        return Encoding.ASCII.GetString(name, 0, length).TrimEnd('\0');
    }

    internal static void Set(Socket socket, string algorithm) =>
        socket.SetRawSocketOption(6, 13, Encoding.ASCII.GetBytes(algorithm));
}

/// <summary>Skipped, with the reason, where a TCP socket cannot be switched to BBR (tcp_bbr not built or not permitted).</summary>
public sealed class BbrFactAttribute : FactAttribute
{
    public BbrFactAttribute()
    {
        try
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            LocalPeerTests.Set(socket, "bbr");
        }
        catch (SocketException e)
        {
            Skip = $"SKIPPED, this kernel does not let a socket use bbr: {e.Message}";
        }
    }
}

/// <summary>Skipped, with the reason, unless BBR is the system's congestion control (new sockets start with it).</summary>
public sealed class DefaultBbrFactAttribute : FactAttribute
{
    public DefaultBbrFactAttribute()
    {
        const string setting = "/proc/sys/net/ipv4/tcp_congestion_control";
        string current = File.Exists(setting) ? File.ReadAllText(setting).Trim() : "unknown";
        if (current != "bbr")
            Skip = $"SKIPPED, the system's congestion control is {current}, not bbr: a new socket has nothing to move off.";
    }
}
