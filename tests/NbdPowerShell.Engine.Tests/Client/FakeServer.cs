using System.Net;
using System.Net.Sockets;

namespace NbdPowerShell.Engine.Tests.Client;

/// <summary>A loopback listener that answers the first connection with canned bytes (or silence) to provoke client errors.</summary>
internal sealed class FakeServer : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _cts = new();
    private readonly List<Socket> _accepted = new();

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public FakeServer(byte[] greeting, Func<Socket, Task>? then = null)
    {
        _listener.Start();
        _ = Task.Run(async () =>
        {
            try
            {
                var s = await _listener.AcceptSocketAsync(_cts.Token);
                lock (_accepted) _accepted.Add(s);
                if (greeting.Length > 0) await s.SendAsync(greeting, SocketFlags.None, _cts.Token);
                if (then is not null) await then(s);
            }
            catch (Exception) { }
        });
    }

    public void Dispose()
    {
        _cts.Cancel();
        _listener.Stop();
        lock (_accepted) foreach (var s in _accepted) s.Dispose();
    }
}
