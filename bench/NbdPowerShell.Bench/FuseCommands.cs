using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;

namespace NbdPowerShell.Bench;

/// <summary>
/// The FUSE attacher outside PowerShell, for benchmarks and for tests that must kill the attaching process.
///   fuse-attach --uri URI [--runtime-dir DIR] [--connections N] [--read-only] [--no-direct-io] [--max-in-flight N]
///     prints "READY /dev/loopN ID MOUNTPOINT", serves until SIGINT/SIGTERM, detaches (forced) and prints statistics.
///   fuse-attach --memory SIZE [--readers N] [...]: the same over a disk in this process's memory, without NBD
///     (the FUSE and loop path alone; <see cref="MemoryDiskIo"/>).
///   fuse-cleanup [--runtime-dir DIR] [--force]
///     removes what dead owners left in DIR/fuse and prints one line per attachment.
/// </summary>
internal static class FuseCommands
{
    public static async Task<int> RunAsync(string[] args)
    {
        string? uri = null, runtime = null;
        long memory = 0;
        int readers = 8;
        bool force = false;
        var options = new FuseAttachOptions();
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => args[++i];
            switch (args[i])
            {
                case "--uri": uri = Next(); break;
                case "--memory": memory = long.Parse(Next().TrimEnd('M', 'm')) << 20; break;
                case "--readers": readers = int.Parse(Next()); break;
                case "--runtime-dir": runtime = Next(); break;
                case "--connections": options = options with { Connections = int.Parse(Next()) }; break;
                case "--read-only": options = options with { ReadOnly = true }; break;
                case "--no-direct-io": options = options with { DirectIo = false }; break;
                case "--max-in-flight": options = options with { MaxInFlight = int.Parse(Next()) }; break;
                case "--force": force = true; break;
                default:
                    Console.Error.WriteLine($"unknown argument {args[i]}");
                    return 2;
            }
        }
        await using var attacher = new FuseAttacher(runtime);
        if (args[0] == "fuse-cleanup")
        {
            var report = await attacher.CleanUpAsync(force);
            foreach (var e in report.Cleaned) Console.WriteLine($"CLEANED {e.Id} complete={e.IsComplete}: {string.Join("; ", e.Actions)}");
            foreach (var e in report.Skipped) Console.WriteLine($"SKIPPED {e.Id}: {string.Join("; ", e.Actions)}");
            return 0;
        }
        if (args[0] != "fuse-attach" || (uri is null) == (memory == 0))
        {
            Console.Error.WriteLine("usage: fuse-attach --uri URI|--memory MIB [...] | fuse-cleanup [...]");
            return 2;
        }
        var attachment = uri is not null
            ? await attacher.AttachAsync(NbdUri.Parse(uri), options)
            : await attacher.AttachAsync(new MemoryDiskIo(memory), options, null, null, readers);
        Console.WriteLine($"READY {attachment.LoopDevice} {attachment.Id} {attachment.MountPoint}");
        var stop = new TaskCompletionSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.TrySetResult(); };
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; stop.TrySetResult(); });
        await Task.WhenAny(stop.Task, attachment.Completion);
        var s = attachment.Statistics;
        await attachment.DetachAsync(force: true);
        Console.WriteLine($"reads {s.Reads} ({s.BytesRead / 1048576} MiB), writes {s.Writes} ({s.BytesWritten / 1048576} MiB), flushes {s.Flushes}, zeroes {s.Zeroes}, errors {s.Errors}, peak in flight {s.PeakInFlight}, reconnects {s.Reconnects}");
        Console.WriteLine($"allocated {GC.GetTotalAllocatedBytes() / 1048576} MiB, collections gen0 {GC.CollectionCount(0)} gen1 {GC.CollectionCount(1)} gen2 {GC.CollectionCount(2)}");
        return 0;
    }
}
