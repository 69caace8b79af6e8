using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using Xunit;

namespace NbdPowerShell.Module.Tests;

/// <summary>The module's logic that runs without a runspace: export host, error catalogue, log bridge, mapping.</summary>
public sealed class ExportHostTests : IDisposable
{
    private readonly EngineLog _log = new();
    private readonly ExportHost _host;

    public ExportHostTests() => _host = new ExportHost(_log);

    public void Dispose() => _host.Shutdown();

    private static ExportRequest Memory(string name, int port = 0, long size = 1 << 20) =>
        new() { Name = name, MemorySize = size, Port = port };

    [Fact]
    public void PortZeroIsReportedAndExportsOnOnePortShareTheListener()
    {
        var a = _host.Start(Memory("a"));
        Assert.NotEqual(0, a.Port);
        var b = _host.Start(Memory("b", a.Port));
        Assert.Equal(a.Port, b.Port);
        Assert.Equal($"nbd://127.0.0.1:{a.Port}/a", a.Uri);
        var list = NbdClient.ListExportsAsync(NbdUri.ForTcp("127.0.0.1", a.Port)).GetAwaiter().GetResult();
        Assert.Equal(["a", "b"], list.Select(e => e.Name).Order());
        Assert.All(list, e => Assert.Equal(1 << 20, e.Size));
    }

    [Fact]
    public void DuplicateNamesAreRefusedCaseInsensitively()
    {
        _host.Start(Memory("disk"));
        var e = Assert.Throws<NbdServerException>(() => _host.Start(Memory("DISK")));
        Assert.Equal(ErrorIds.ExportAlreadyExists, ErrorIds.Classify(e));
    }

    [Fact]
    public void StoppingTheLastExportFreesThePort()
    {
        var a = _host.Start(Memory("only"));
        var stopped = _host.StopAsync("only", force: false).GetAwaiter().GetResult();
        Assert.Equal("Stopped", stopped.State);
        Assert.True(_host.WhenStopped("only").IsCompleted);
        Assert.Empty(_host.GetExports());
        using var probe = new TcpListener(System.Net.IPAddress.Loopback, a.Port);
        probe.Start();
    }

    [Fact]
    public void StopRefusesWhileClientsAreConnectedUnlessForced()
    {
        var a = _host.Start(Memory("busy"));
        using var connection = NbdClient.ConnectAsync("127.0.0.1", a.Port, "busy").GetAwaiter().GetResult();
        WaitFor(() => _host.GetExport("busy")!.ClientCount == 1);
        var e = Assert.ThrowsAny<Exception>(() => _host.StopAsync("busy", force: false).GetAwaiter().GetResult());
        Assert.Equal(ErrorIds.ExportBusy, ErrorIds.Classify(e));
        _host.StopAsync("busy", force: true).GetAwaiter().GetResult();
        Assert.Null(_host.GetExport("busy"));
    }

    [Fact]
    public void CtrlCDuringAForcedStopStillFreesTheNameAndTheFile()
    {
        string dir = Directory.CreateTempSubdirectory("nbdps-stop-").FullName;
        string path = Path.Combine(dir, "disk.img");
        File.WriteAllBytes(path, new byte[1 << 20]);
        try
        {
            _host.Start(new ExportRequest { Name = "held", Path = path, Port = 0 });
            var a = _host.GetExport("held")!;
            var connection = NbdClient.ConnectAsync("127.0.0.1", a.Port, "held").GetAwaiter().GetResult();
            WaitFor(() => _host.GetExport("held")!.ClientCount == 1);

            // The idle client keeps the drain waiting; Ctrl+C arrives in the middle of it.
            using var ctrlC = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
            Assert.ThrowsAny<OperationCanceledException>(() => _host.StopAsync("held", force: true, ctrlC.Token).GetAwaiter().GetResult());

            Assert.Null(_host.GetExport("held"));
            _host.Start(Memory("held")); // the name is free again
            connection.Dispose();
            // The interrupted drain still finishes in the background and closes the file.
            WaitFor(() => OpenDescriptorsOn(path) == 0);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static int OpenDescriptorsOn(string path) =>
        Directory.GetFiles("/proc/self/fd").Count(fd =>
        {
            try { return new FileInfo(fd).LinkTarget == path; }
            catch (IOException) { return false; }
        });

    [Fact]
    public void StopOfAnUnknownExportIsExportNotFound()
    {
        var e = Assert.ThrowsAny<Exception>(() => _host.StopAsync("nope", false).GetAwaiter().GetResult());
        Assert.Equal(ErrorIds.ExportNotFound, ErrorIds.Classify(e));
    }

    [Fact]
    public void LocalConnectionServesDataWithoutTcp()
    {
        _host.Start(Memory("local"));
        var (socket, uri) = _host.OpenLocalConnectionAsync("local", default).GetAwaiter().GetResult();
        Assert.Equal(AddressFamily.Unix, socket.AddressFamily);
        using var connection = NbdClient.NegotiateAsync(socket, uri).GetAwaiter().GetResult();
        var data = Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray();
        connection.WriteAsync(8192, data).GetAwaiter().GetResult();
        var back = new byte[4096];
        connection.ReadAsync(8192, back).GetAwaiter().GetResult();
        Assert.Equal(data, back);
        Assert.Equal(1 << 20, connection.Size);
    }

    [Fact]
    public void CopyOnWriteNeverModifiesTheBase()
    {
        string file = Path.Combine(Path.GetTempPath(), $"nbdps-cow-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(file, new byte[1 << 20]);
        try
        {
            var export = _host.Start(new ExportRequest { Name = "cow", Path = file, CopyOnWrite = true, Port = 0 });
            Assert.True(export.IsCopyOnWrite);
            Assert.False(export.IsReadOnly);
            using (var c = NbdClient.ConnectAsync("127.0.0.1", export.Port, "cow").GetAwaiter().GetResult())
            {
                c.WriteAsync(0, new byte[] { 1, 2, 3, 4 }).GetAwaiter().GetResult();
                var back = new byte[4];
                c.ReadAsync(0, back).GetAwaiter().GetResult();
                Assert.Equal(new byte[] { 1, 2, 3, 4 }, back);
            }
            _host.StopAsync("cow", force: true).GetAwaiter().GetResult();
            Assert.All(File.ReadAllBytes(file).Take(4), b => Assert.Equal(0, b));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void UnixSocketExportsGetTheirOwnServer()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nbdps-{Guid.NewGuid():N}.sock");
        var export = _host.Start(new ExportRequest { Name = "u", MemorySize = 65536, SocketPath = path });
        Assert.Equal(path, export.SocketPath);
        Assert.Null(export.ListenAddress);
        Assert.StartsWith("nbd+unix:///u?socket=", export.Uri);
        var list = NbdClient.ListExportsAsync(NbdUri.ForUnix(path)).GetAwaiter().GetResult();
        Assert.Equal("u", Assert.Single(list).Name);
    }

    [Fact]
    public void AllowedClientsAndMaxConnectionsReachTheServer()
    {
        var export = _host.Start(Memory("private") with { AllowedClient = ["10.0.0.0/8"] });
        Assert.Equal(["10.0.0.0/8"], export.AllowedClient);
        var list = NbdClient.ListExportsAsync(NbdUri.ForTcp("127.0.0.1", export.Port)).GetAwaiter().GetResult();
        Assert.Empty(list);
    }

    [Fact]
    public void BadListenAddressIsAnArgumentError()
    {
        var e = Assert.ThrowsAny<Exception>(() => _host.Start(Memory("x") with { ListenAddress = "not-an-ip" }));
        Assert.Equal(ErrorIds.InvalidArgument, ErrorIds.Classify(e));
        Assert.Empty(_host.GetExports());
    }

    [Fact]
    public void BusyPortIsAddressInUse()
    {
        using var blocker = new TcpListener(System.Net.IPAddress.Loopback, 0);
        blocker.Start();
        int port = ((System.Net.IPEndPoint)blocker.LocalEndpoint).Port;
        var e = Assert.ThrowsAny<Exception>(() => _host.Start(Memory("x", port)));
        Assert.Equal(ErrorIds.AddressInUse, ErrorIds.Classify(e));
    }

    [Fact]
    public void ShutdownStopsEverythingAndWarnsAboutAttachedDevices()
    {
        var a = _host.Start(Memory("one"));
        _host.Start(Memory("two"));
        _host.RecordLocalDevice("two", 5);
        var warnings = _host.Shutdown(() => [(3, "/dev/nbd3", a.Uri, true), (5, "/dev/nbd5", null, true), (6, "/dev/nbd6", "nbd://elsewhere/x", true)]);
        Assert.Equal(2, warnings.Count);
        Assert.Contains(warnings, w => w.StartsWith("/dev/nbd3", StringComparison.Ordinal) && w.Contains("'one'"));
        Assert.Contains(warnings, w => w.StartsWith("/dev/nbd5", StringComparison.Ordinal) && w.Contains("'two'"));
        Assert.Empty(_host.GetExports());
        Assert.True(_host.WhenStopped("one").IsCompleted);
        Assert.Empty(_host.Shutdown());
    }

    [Fact]
    public void EngineMessagesAreQueuedNotWritten()
    {
        _host.Start(Memory("logged"));
        var texts = new List<string>();
        while (_log.TryDequeue(out var m))
            texts.Add(m.Text);
        Assert.Contains(texts, t => t.Contains("logged"));
    }

    private static void WaitFor(Func<bool> condition)
    {
        var until = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "condition not met in 10 s");
            Thread.Sleep(20);
        }
    }
}

public sealed class ErrorCatalogueTests
{
    [Fact]
    public void EngineExceptionsMapToCatalogueIds()
    {
        Assert.Equal("NbdExportNameUnknown", ErrorIds.Classify(new NbdExportNotFoundException("x", Engine.Protocol.NbdOption.Go, null, "m")));
        Assert.Equal("NbdTimeout", ErrorIds.Classify(new NbdTimeoutException("m", TimeSpan.FromSeconds(1))));
        Assert.Equal("NbdConnectionFailed", ErrorIds.Classify(new NbdConnectionRefusedException("m")));
        Assert.Equal("NbdConnectionFailed", ErrorIds.Classify(new NbdConnectionException("m")));
        Assert.Equal("NbdHandshakeFailed", ErrorIds.Classify(new NbdProtocolException("m")));
        Assert.Equal("NbdHandshakeFailed", ErrorIds.Classify(new NbdPolicyRefusedException(Engine.Protocol.NbdOption.Go, null, "m")));
        Assert.Equal("NbdTlsRequired", ErrorIds.Classify(new NbdTlsRequiredException(Engine.Protocol.NbdOption.Go, null, "m")));
        Assert.Equal("NbdDeviceMounted", ErrorIds.Classify(new NbdDeviceMountedException(1, ["/mnt"], [], "m")));
        Assert.Equal("NbdDeviceBusy", ErrorIds.Classify(new NbdDeviceBusyException(1, "m")));
        Assert.Equal("NbdDeviceNotFound", ErrorIds.Classify(new NbdDeviceNotFoundException(1, "m")));
        Assert.Equal("NbdPermissionDenied", ErrorIds.Classify(new NbdPermissionDeniedException("m")));
        Assert.Equal("NbdKernelModuleMissing", ErrorIds.Classify(new NbdKernelModuleMissingException("m")));
        Assert.Equal("NbdPlatformNotSupported", ErrorIds.Classify(new NbdPlatformNotSupportedException("m")));
        Assert.Equal("NbdMultiConnNotSupported", ErrorIds.Classify(new NbdMultiConnNotSupportedException("m")));
        Assert.Equal("NbdKernelError", ErrorIds.Classify(new NbdKernelException("m")));
        Assert.Equal("NbdAddressInUse", ErrorIds.Classify(new NbdServerException(NbdServerError.AddressInUse, "m")));
        Assert.Equal("NbdPermissionDenied", ErrorIds.Classify(new StorageException(13, "m")));
        Assert.Equal("NbdPathNotFound", ErrorIds.Classify(new StorageException(2, "m")));
        Assert.Equal("NbdDestinationExists", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.Exists, "m")));
        Assert.Equal("NbdDestinationReadOnly", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.ReadOnly, "m")));
        Assert.Equal("NbdDestinationTooSmall", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.TooSmall, "m")));
        Assert.Equal("NbdInvalidArgument", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.SameAsSource, "m")));
        Assert.Equal("NbdDiskReadFailed", ErrorIds.Classify(new Engine.Copy.DiskIOException(Engine.Copy.DiskSide.Source, 1, 0, "m", new NbdConnectionException("x"))));
        Assert.Equal("NbdDiskWriteFailed", ErrorIds.Classify(new Engine.Copy.DiskIOException(Engine.Copy.DiskSide.Destination, 1, 0, "m", new IOException("x"))));
        Assert.Null(ErrorIds.Classify(new InvalidOperationException("a bug, not an expected failure")));
    }

    [Fact]
    public void TheCatalogueHasTheIssueIds()
    {
        foreach (var id in new[] { "NbdExportNotFound", "NbdExportAlreadyExists", "NbdAddressInUse", "NbdDeviceNotFound", "NbdDeviceBusy",
                     "NbdDeviceMounted", "NbdPermissionDenied", "NbdKernelModuleMissing", "NbdPlatformNotSupported", "NbdHandshakeFailed",
                     "NbdExportNameUnknown", "NbdConnectionFailed", "NbdTimeout" })
            Assert.Contains(id, ErrorIds.All);
    }
}

public sealed class EngineLogTests
{
    [Fact]
    public void QueueIsBoundedAndCountsDrops()
    {
        var log = new EngineLog();
        for (int i = 0; i < EngineLog.Capacity + 10; i++)
            log.LogInformation("message {I}", i);
        Assert.Equal(EngineLog.Capacity, log.Count);
        Assert.Equal(10, log.TakeDroppedCount());
        Assert.True(log.TryDequeue(out var first));
        Assert.Equal("message 10", first.Text);
    }

    [Fact]
    public void DebugIsFilteredAndExceptionsAreAppended()
    {
        var log = new EngineLog();
        log.LogDebug("hidden");
        log.LogWarning(new IOException("disk gone"), "Export {Name} failed", "x");
        Assert.True(log.TryDequeue(out var m));
        Assert.Equal(LogLevel.Warning, m.Level);
        Assert.Equal("Export x failed: disk gone", m.Text);
        Assert.False(log.TryDequeue(out _));
    }
}

public sealed class SessionMapperTests
{
    [Theory]
    [InlineData("/dev/nbd3", 3)]
    [InlineData("nbd12", 12)]
    [InlineData("7", 7)]
    [InlineData("/dev/sda", null)]
    [InlineData("nbd", null)]
    public void ParsesDeviceArguments(string text, int? index) => Assert.Equal(index, SessionMapper.ParseDevice(text));

    [Fact]
    public void SessionTakesHostPortAndExportFromTheBackendUri()
    {
        var info = new NbdDeviceInfo
        {
            Device = "/dev/nbd2", Index = 2, IsConnected = true, Size = 1 << 30, BlockSize = 4096, IsReadOnly = true,
            BackendIdentifier = "nbd://nas01:10810/backup", Connections = 2, TimeoutSeconds = 30, MountPoints = ["/mnt/b"],
            Mode = AttachMode.Netlink,
        };
        var s = SessionMapper.ToSession(info);
        Assert.Equal(("/dev/nbd2", 2, "nas01", 10810, "backup"), (s.Device, s.Index, s.ComputerName, s.Port, s.ExportName));
        Assert.Equal("nbd://nas01:10810/backup", s.Uri);
        Assert.Equal(["/mnt/b"], s.MountPoints);
        Assert.Equal((2, 30, true, true), (s.Connections!.Value, s.Timeout!.Value, s.IsReadOnly, s.IsConnected));
        Assert.Equal("Netlink", s.Mode);
    }

    [Fact]
    public void DevicesOfOtherToolsWithoutUriStillMap()
    {
        var s = SessionMapper.ToSession(new NbdDeviceInfo { Device = "/dev/nbd0", Index = 0, IsConnected = true, Size = 512, BlockSize = 512, IsReadOnly = false });
        Assert.Null(s.ComputerName);
        Assert.Null(s.Uri);
        Assert.Null(s.Mode);
        var d = SessionMapper.ToDevice(new NbdDeviceInfo { Device = "/dev/nbd1", Index = 1, IsConnected = false, Size = 0, BlockSize = 0, IsReadOnly = false });
        Assert.Equal("Free", d.State);
    }
}
