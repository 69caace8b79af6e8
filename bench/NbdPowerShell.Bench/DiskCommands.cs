using NbdPowerShell.Engine.Copy;

/// <summary>The copy and hash subcommands: the engine's copier and hasher without PowerShell, for benchmarks.</summary>
internal static class DiskCommands
{
    public static async Task<int> RunAsync(string[] args)
    {
        try
        {
            return await RunCoreAsync(args);
        }
        catch (DiskOperationCanceledException e)
        {
            Console.Error.WriteLine(e.Message);
            return 130;
        }
        catch (Exception e) when (e is DiskIOException or DiskDestinationException)
        {
            Console.Error.WriteLine(e.Message);
            return 1;
        }
    }

    private static async Task<int> RunCoreAsync(string[] args)
    {
        var positional = new List<string>();
        var options = DiskCopyOptions.Default;
        int repeat = 1;
        for (int i = 1; i < args.Length; i++)
        {
            string Next() => args[++i];
            switch (args[i])
            {
                case "--connections": options = options with { Connections = int.Parse(Next()) }; break;
                case "--request-size": options = options with { RequestSize = int.Parse(Next()) }; break;
                case "--sparse": options = options with { SparseBlockSize = int.Parse(Next()) }; break;
                case "--force": options = options with { Overwrite = true }; break;
                case "--flush": options = options with { Flush = true }; break;
                case "--verify": options = options with { Verify = true }; break;
                case "--keep-loopback-pacing": NbdPowerShell.Engine.Server.LocalPeer.AvoidPacingEnabled = false; break;
                case "--repeat": repeat = int.Parse(Next()); break;
                case "--algorithm": options = options with { HashAlgorithm = DiskHasher.ParseAlgorithm(Next()) }; break;
                default: positional.Add(args[i]); break;
            }
        }
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
        var progress = new DiskProgress();
        if (args[0] == "hash" && positional.Count == 1)
        {
            var h = await DiskHasher.HashAsync(DiskLocation.Parse(positional[0]), options, progress, cancel.Token);
            Console.WriteLine($"{h.Hash}  {h.Source}");
            Console.Error.WriteLine($"{h.Size} bytes, {h.BytesRead} read, {h.Duration.TotalSeconds:0.000} s, {h.Connections} connections");
            return 0;
        }
        if (args[0] == "copy" && positional.Count == 2)
        {
            // --repeat N copies N times in this process (the destination is deleted in between when it is a file),
            // so the later runs show the warm cost without process start and compilation.
            for (int run = 1; run < repeat; run++)
            {
                await using (var warm = await DiskCopy.PrepareAsync(DiskLocation.Parse(positional[0]), DiskLocation.Parse(positional[1]), options, cancel.Token))
                {
                    var w = await warm.RunAsync(new DiskProgress(), cancel.Token);
                    Console.WriteLine($"run {run}: {w.Duration.TotalSeconds:0.000} s");
                }
                if (File.Exists(positional[1]))
                    File.Delete(positional[1]);
            }
            await using var copy = await DiskCopy.PrepareAsync(DiskLocation.Parse(positional[0]), DiskLocation.Parse(positional[1]), options, cancel.Token);
            var r = await copy.RunAsync(progress, cancel.Token);
            Console.WriteLine($"{r.Size} bytes in {r.Duration.TotalSeconds:0.000} s: read {r.BytesRead}, written {r.BytesWritten}, skipped {r.BytesSkipped}, zeroed {r.BytesZeroed}; " +
                $"connections {r.SourceConnections}/{r.DestinationConnections}, requests of {r.RequestSize} bytes{(r.SourceHash is null ? "" : $", hashes {(r.SourceHash == r.DestinationHash ? "match" : "DIFFER")}")}");
            return 0;
        }
        Console.Error.WriteLine("usage: copy SOURCE DESTINATION [options] | hash SOURCE [options]");
        return 2;
    }
}
