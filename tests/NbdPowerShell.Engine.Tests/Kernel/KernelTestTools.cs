using System.Diagnostics;
using System.Security.Cryptography;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>Kernel tests share /dev/nbd*: one collection keeps them sequential.</summary>
[CollectionDefinition("Kernel", DisableParallelization = true)]
public sealed class KernelCollection { }

internal static class KernelTestTools
{
    public static readonly TimeSpan ClientTimeout = TimeSpan.FromSeconds(120); // .NET in the VM is 20-30x slower

    public static NbdClientOptions Options => new() { Timeout = ClientTimeout };

    public static async Task<AttachResult> AttachAsync(NbdUri uri, AttachOptions options, int connections = 1)
    {
        var list = new List<NbdNegotiatedConnection>();
        for (int i = 0; i < connections; i++) list.Add(await NbdClient.ConnectAsync(uri, Options));
        return await new KernelAttacher().AttachAsync(list, options);
    }

    /// <summary>Writes <paramref name="length"/> random bytes through the block device, fsyncs, returns their SHA-256.</summary>
    public static byte[] WriteRandom(string device, long length, long offset = 0)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var fs = new FileStream(device, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0);
        fs.Position = offset;
        var buffer = new byte[1 << 20];
        for (long done = 0; done < length; done += buffer.Length)
        {
            RandomNumberGenerator.Fill(buffer);
            fs.Write(buffer);
            sha.AppendData(buffer);
        }
        fs.Flush(flushToDisk: true);
        return sha.GetHashAndReset();
    }

    public static byte[] HashDevice(string device, long length, long offset = 0)
    {
        DropCaches();
        using var fs = new FileStream(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 0);
        fs.Position = offset;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long done = 0; done < length; done += buffer.Length)
        {
            fs.ReadExactly(buffer);
            sha.AppendData(buffer);
        }
        return sha.GetHashAndReset();
    }

    /// <summary>Forces reads to go to the server instead of the page cache.</summary>
    public static void DropCaches()
    {
        Sync();
        File.WriteAllText("/proc/sys/vm/drop_caches", "3");
    }

    public static void Sync() => Run("sync");

    public static (int Code, string Output) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(Peers.PeerServer.RequireBinary(file)) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(); Assert.Fail($"{file} {string.Join(' ', args)} did not finish within 300 s."); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    public static void RunOk(string file, params string[] args)
    {
        var (code, output) = Run(file, args);
        Assert.True(code == 0, $"{file} {string.Join(' ', args)} exited with {code}: {output}");
    }

    public static NbdDeviceInfo Device(int index) => NbdDeviceDiscovery.System().GetDevice(index) ?? throw new InvalidOperationException($"nbd{index} vanished");

    public static async Task DisconnectAndVerifyFreeAsync(int index, bool force = false)
    {
        await new KernelAttacher().DisconnectAsync(index, force, TimeSpan.FromSeconds(60));
        var d = Device(index);
        Assert.False(d.IsConnected, $"nbd{index} still connected after disconnect");
        Assert.Null(d.Pid);
        Assert.Equal(0, d.Size);
    }

    public static int FreeIndex(int after = -1) =>
        NbdDeviceDiscovery.System().GetDevices().First(d => d.Index > after && !d.IsConnected && d.Pid is null).Index;
}
