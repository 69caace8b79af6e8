using System.Net;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Storage;

// Usage: NbdPowerShell.Bench serve [--port N] [--address A] [--unix PATH] [--workers N]
//          [--memory NAME:SIZE]... [--file NAME:PATH]... [--cow NAME:PATH]... [--read-only]
//          [--splice-file-reads RemotePeers|Always|Never] [--splice-minimum BYTES] [--parallel-memory-read-minimum BYTES]
//          [--cached-read-maximum BYTES] [--reply-batch-bytes BYTES] [--inline-write-maximum BYTES]
//          [--inline-small-write-maximum BYTES] [--header-at-a-time-write-minimum BYTES] [--keep-loopback-pacing]
//          [--tls-certificate CERT.pem --tls-key KEY.pem]
//        Prints "READY <port>" once listening, then serves until SIGINT or SIGTERM.
//        NbdPowerShell.Bench copy SOURCE DESTINATION [--connections N] [--request-size BYTES] [--sparse BYTES] [--force]
//        NbdPowerShell.Bench hash SOURCE [--algorithm SHA256]
//        Copy or hash disks (NBD URIs or local paths) with the engine alone, as Copy-NbdDisk and Get-NbdDiskHash do.
//        NbdPowerShell.Bench fuse-attach|fuse-cleanup ... (see FuseCommands.cs)
//        NbdPowerShell.Bench service RUNTIME_DIR CONFIG_DIR
//        Runs the NbdPowerShell service (what pwsh runs for the module) until SIGTERM, for tests that kill it.
if (args.Length > 0 && args[0] is "copy" or "hash")
    return await DiskCommands.RunAsync(args);
if (args.Length == 3 && args[0] == "service")
    return NbdService.Run(args[1], args[2]);
if (args.Length > 0 && args[0].StartsWith("fuse-", StringComparison.Ordinal))
    return await NbdPowerShell.Bench.FuseCommands.RunAsync(args);
if (args.Length == 0 || args[0] != "serve")
{
    Console.Error.WriteLine("usage: serve [--port N] [--address A] [--unix PATH] [--memory NAME:SIZE] [--file NAME:PATH] [--cow NAME:PATH] [--read-only]");
    Console.Error.WriteLine("       copy SOURCE DESTINATION [--connections N] [--request-size BYTES] [--sparse BYTES] [--force]");
    Console.Error.WriteLine("       hash SOURCE [--algorithm NAME] [--connections N]");
    Console.Error.WriteLine("       fuse-attach --uri URI|--memory MIB [--readers N] [--runtime-dir DIR] [--connections N] [--read-only] [--no-direct-io] [--max-in-flight N]");
    Console.Error.WriteLine("       fuse-cleanup [--runtime-dir DIR] [--force]");
    Console.Error.WriteLine("       service RUNTIME_DIR CONFIG_DIR");
    return 2;
}

int port = 10809;
var address = IPAddress.Loopback;
string? unix = null;
bool readOnly = false;
int workers = new NbdServerOptions().WorkerThreads;
var splicing = new NbdServerOptions().FileReadSplicing;
string? tlsCertificate = null, tlsKey = null;
var exports = new List<(string Name, Func<IBlockStore> Open)>();
for (int i = 1; i < args.Length; i++)
{
    string Next() => args[++i];
    switch (args[i])
    {
        case "--port": port = int.Parse(Next()); break;
        case "--address": address = IPAddress.Parse(Next()); break;
        case "--unix": unix = Next(); break;
        case "--read-only": readOnly = true; break;
        case "--workers": workers = int.Parse(Next()); break;
        case "--tls-certificate": tlsCertificate = Next(); break; // TLS required: benchmarks of the copying path
        case "--tls-key": tlsKey = Next(); break;
        // Tuning experiments (A/B runs for docs/performance.md), not settings a user needs.
        case "--splice-minimum": RequestExecutor.SpliceMinimum = int.Parse(Next()); break;
        case "--splice-file-reads": splicing = Enum.Parse<FileReadSplicing>(Next(), ignoreCase: true); break;
        case "--parallel-memory-read-minimum": ClientConnection.ParallelMemoryReadMinimum = int.Parse(Next()); break;
        case "--cached-read-maximum": ClientConnection.CachedReadMaximum = int.Parse(Next()); break; // 0: every file read to a worker
        case "--reply-batch-bytes": ReplyBatch.FlushBytes = int.Parse(Next()); break;
        case "--inline-write-maximum": ClientConnection.InlineWriteMaximum = int.Parse(Next()); break; // 0: every file write to a worker
        case "--inline-small-write-maximum": ClientConnection.InlineSmallWriteMaximum = int.Parse(Next()); break;
        case "--keep-loopback-pacing": LocalPeer.AvoidPacingEnabled = false; break;
        case "--header-at-a-time-write-minimum": ClientConnection.HeaderAtATimeWriteMinimum = int.Parse(Next()); break;
        case "--memory":
        {
            var (name, size) = Split(Next());
            exports.Add((name, () => StoreOpener.Open(null, ParseSize(size), readOnly: false, copyOnWrite: false)));
            break;
        }
        case "--cow":
        {
            var (name, path) = Split(Next());
            exports.Add((name, () => StoreOpener.Open(path, 0, readOnly: false, copyOnWrite: true)));
            break;
        }
        case "--file":
        {
            var (name, path) = Split(Next());
            exports.Add((name, () => StoreOpener.Open(path, 0, readOnly, copyOnWrite: false)));
            break;
        }
        default:
            Console.Error.WriteLine($"unknown argument {args[i]}");
            return 2;
    }
}

TlsOptions? tls = tlsCertificate == null ? null
    : new TlsOptions(System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(tlsCertificate, tlsKey));
var server = new NbdServer(new NbdServerOptions { WorkerThreads = workers, FileReadSplicing = splicing, Tls = tls });
foreach (var (name, open) in exports)
    server.AddExport(new ExportDefinition(name, open()) { ReadOnly = readOnly });
var bound = server.ListenTcp(new IPEndPoint(address, port));
if (unix != null)
    server.ListenUnix(unix);
Console.WriteLine($"READY {bound.Port}");

var stop = new TaskCompletionSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.TrySetResult(); };
using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(
    System.Runtime.InteropServices.PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; stop.TrySetResult(); });
await stop.Task;
await server.StopAsync();
// Steady-state serving should neither allocate nor collect much; print it so a benchmark run shows it.
Console.WriteLine($"allocated {GC.GetTotalAllocatedBytes() / 1048576} MiB, collections gen0 {GC.CollectionCount(0)} gen1 {GC.CollectionCount(1)} gen2 {GC.CollectionCount(2)}");
return 0;

static (string, string) Split(string s)
{
    int i = s.IndexOf(':');
    return i < 0 ? ("", s) : (s[..i], s[(i + 1)..]);
}

static long ParseSize(string s)
{
    s = s.Trim().ToUpperInvariant();
    long mult = 1;
    if (s.EndsWith('K')) mult = 1L << 10;
    else if (s.EndsWith('M')) mult = 1L << 20;
    else if (s.EndsWith('G')) mult = 1L << 30;
    else if (s.EndsWith('T')) mult = 1L << 40;
    return long.Parse(mult == 1 ? s : s[..^1]) * mult;
}
