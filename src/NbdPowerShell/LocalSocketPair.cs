using System.Net.Sockets;

namespace NbdPowerShell;

/// <summary>
/// A connected pair of Unix stream sockets made without native code: listen on a private temporary path,
/// connect, accept, then delete the path. The kernel accepts such sockets like any NBD connection.
/// </summary>
internal static class LocalSocketPair
{
    public static async Task<(Socket Client, Socket Server)> CreateAsync(CancellationToken cancellationToken)
    {
        string dir = Directory.CreateTempSubdirectory("nbdps-").FullName;
        string path = Path.Combine(dir, "s");
        var endPoint = new UnixDomainSocketEndPoint(path);
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(endPoint);
            listener.Listen(1);
            var accept = listener.AcceptAsync(cancellationToken).AsTask();
            await client.ConnectAsync(endPoint, cancellationToken).ConfigureAwait(false);
            var server = await accept.ConfigureAwait(false);
            return (client, server);
        }
        catch
        {
            client.Dispose();
            throw;
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
