using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Tests.Peers;
using NbdPowerShell.Engine.Tests.TestSupport;

namespace NbdPowerShell.Engine.Tests.Kernel;

public enum ServerKind { Engine, Nbdkit, NbdServer }

/// <summary>
/// A real server process serving an image file on a fixed loopback port that a test can kill (SIGKILL) and start
/// again on the same port: our engine (the bench host), nbdkit (file plugin) or nbd-server.
/// </summary>
internal sealed class RestartableServer : IDisposable
{
    private readonly PeerServer? _peer;
    private readonly BenchHost? _bench;

    private RestartableServer(ServerKind kind, NbdUri uri, PeerServer? peer, BenchHost? bench)
    {
        Kind = kind;
        Uri = uri;
        _peer = peer;
        _bench = bench;
    }

    public ServerKind Kind { get; }
    public NbdUri Uri { get; }

    public static RestartableServer Serve(ServerKind kind, string image, string exportName, bool readOnly)
    {
        switch (kind)
        {
            case ServerKind.Engine:
            {
                var args = new List<string> { "--address", "127.0.0.1", "--file", $"{exportName}:{image}" };
                if (readOnly) args.Add("--read-only");
                var host = BenchHost.Start(args.ToArray());
                return new RestartableServer(kind, NbdUri.ForTcp("127.0.0.1", host.Port, exportName), null, host);
            }
            case ServerKind.Nbdkit:
            {
                var peer = PeerServer.NbdkitFile(image, readOnly);
                return new RestartableServer(kind, peer.Uri.WithExportName(exportName), peer, null);
            }
            default:
            {
                var peer = PeerServer.NbdServerFile(exportName, image, readOnly);
                return new RestartableServer(kind, peer.Uri, peer, null);
            }
        }
    }

    /// <summary>SIGKILL the server (all its processes).</summary>
    public void Kill()
    {
        if (_peer is not null) _peer.Kill();
        else _bench!.Kill();
    }

    /// <summary>Starts it again on the same port; returns when it started and when it accepted connections (UTC).</summary>
    public (DateTime Started, DateTime Accepting) Restart()
    {
        if (_peer is not null)
        {
            _peer.Restart();
            return _peer.LastRestart!.Value;
        }
        _bench!.Restart();
        return _bench.LastRestart!.Value;
    }

    public void Dispose()
    {
        _peer?.Dispose();
        _bench?.Dispose();
    }
}
