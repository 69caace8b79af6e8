using System.Security.Cryptography;
using NbdPowerShell.Engine.Storage;
using NbdPowerShell.Engine.Tests.TestSupport;

namespace NbdPowerShell.Engine.Tests.Interop;

/// <summary>
/// The engine serving the two backends peers are tested against: "mem" (sparse memory) and
/// "file" (a sparse file with 2 MiB of random data at 10 MiB).
/// </summary>
internal sealed class InteropServer : IAsyncDisposable
{
    public const long Size = 64L << 20;
    public const long DataOffset = 10L << 20;
    public const int DataLength = 2 << 20;

    private InteropServer(TestServer server, string imagePath)
    {
        Server = server;
        ImagePath = imagePath;
    }

    public TestServer Server { get; }
    public string ImagePath { get; }

    public static InteropServer Start()
    {
        var server = new TestServer();
        string image = Path.Combine(server.Directory, "sparse.img");
        using (var f = new FileStream(image, FileMode.CreateNew))
        {
            f.SetLength(Size);
            f.Position = DataOffset;
            f.Write(RandomNumberGenerator.GetBytes(DataLength));
        }
        server.Add("mem", new MemoryBlockStore(Size), description: "scratch memory");
        server.Add("file", FileBlockStore.Open(image, readOnly: false), description: "sparse image");
        return new InteropServer(server, image);
    }

    public string Uri(string export, bool unix) => Server.Uri(export, unix);

    public static string Sha256(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(f));
    }

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}
