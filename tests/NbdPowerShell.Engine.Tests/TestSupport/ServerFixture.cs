using System.Net;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Tests.TestSupport;

/// <summary>A running engine server on 127.0.0.1 (ephemeral port) and a Unix socket, torn down after the test.</summary>
internal sealed class TestServer : IAsyncDisposable
{
    public TestServer(NbdServerOptions? options = null)
    {
        Server = new NbdServer(options);
        TcpEndPoint = Server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        Directory = System.IO.Directory.CreateTempSubdirectory("nbdps-test-").FullName;
        SocketPath = Path.Combine(Directory, "nbd.sock");
        Server.ListenUnix(SocketPath);
    }

    public NbdServer Server { get; }
    public IPEndPoint TcpEndPoint { get; }
    public int Port => TcpEndPoint.Port;
    public string SocketPath { get; }
    public string Directory { get; }

    public T Add<T>(string name, T store, string description = "", bool readOnly = false) where T : IBlockStore
    {
        Server.AddExport(new ExportDefinition(name, store) { Description = description, ReadOnly = readOnly });
        return store;
    }

    /// <summary>An NBD URI for peers: nbd://127.0.0.1:port/name or nbd+unix:///name?socket=path.</summary>
    public string Uri(string name, bool unix) =>
        unix ? $"nbd+unix:///{System.Uri.EscapeDataString(name)}?socket={SocketPath}"
             : $"nbd://127.0.0.1:{Port}/{System.Uri.EscapeDataString(name)}";

    public async ValueTask DisposeAsync()
    {
        await Server.StopAsync();
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }
}
