using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;
using Xunit;

namespace NbdPowerShell.Module.Tests;

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
        Assert.Equal("NbdFuseUnavailable", ErrorIds.Classify(new Engine.Fuse.NbdFuseUnavailableException("m")));
        Assert.Equal("NbdLoopUnavailable", ErrorIds.Classify(new Engine.Fuse.NbdLoopUnavailableException("m")));
        Assert.Equal("NbdFuseError", ErrorIds.Classify(new Engine.Fuse.NbdFuseException("m")));
        Assert.Equal("NbdAddressInUse", ErrorIds.Classify(new NbdServerException(NbdServerError.AddressInUse, "m")));
        Assert.Equal("NbdPermissionDenied", ErrorIds.Classify(new StorageException(13, "m")));
        Assert.Equal("NbdPathNotFound", ErrorIds.Classify(new StorageException(2, "m")));
        Assert.Equal("NbdDestinationExists", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.Exists, "m")));
        Assert.Equal("NbdDestinationReadOnly", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.ReadOnly, "m")));
        Assert.Equal("NbdDestinationTooSmall", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.TooSmall, "m")));
        Assert.Equal("NbdInvalidArgument", ErrorIds.Classify(new Engine.Copy.DiskDestinationException(Engine.Copy.DestinationProblem.SameAsSource, "m")));
        Assert.Equal("NbdDiskReadFailed", ErrorIds.Classify(new Engine.Copy.DiskIOException(Engine.Copy.DiskSide.Source, 1, 0, "m", new NbdConnectionException("x"))));
        Assert.Equal("NbdDiskWriteFailed", ErrorIds.Classify(new Engine.Copy.DiskIOException(Engine.Copy.DiskSide.Destination, 1, 0, "m", new IOException("x"))));
        Assert.Equal("NbdServerStopped", ErrorIds.Classify(new NbdServerException(NbdServerError.Stopped, "m")));
        Assert.Equal("NbdIOError", ErrorIds.Classify(new IOException("m")));
        Assert.Equal("NbdTimeout", ErrorIds.Classify(new TimeoutException("m")));
        Assert.Equal("NbdServiceUnavailable", ErrorIds.Classify(new NbdServiceNotRunningException("m")));
        Assert.Equal("NbdExportBusy", ErrorIds.Classify(new NbdHostException("NbdExportBusy", "reported by the service")));
        Assert.Null(ErrorIds.Classify(new InvalidOperationException("a bug, not an expected failure")));
    }

    [Fact]
    public void TheCatalogueHasTheIssueIds()
    {
        foreach (var id in new[] { "NbdExportNotFound", "NbdExportAlreadyExists", "NbdAddressInUse", "NbdDeviceNotFound", "NbdDeviceBusy",
                     "NbdDeviceMounted", "NbdPermissionDenied", "NbdKernelModuleMissing", "NbdPlatformNotSupported", "NbdHandshakeFailed",
                     "NbdExportNameUnknown", "NbdConnectionFailed", "NbdTimeout", "NbdFuseUnavailable", "NbdLoopUnavailable", "NbdFuseError" })
            Assert.Contains(id, ErrorIds.All);
    }

    [Theory]
    [InlineData("NbdFuseUnavailable", "/dev/fuse")]
    [InlineData("NbdLoopUnavailable", "modprobe loop")]
    [InlineData("NbdFuseError", "log")]
    [InlineData("NbdPermissionDenied", "root")]
    public void FuseErrorsSayWhatToDo(string id, string actionMentions) =>
        Assert.Contains(actionMentions, ErrorRecords.RecommendedActionOf(id));

    [Fact]
    public void AutoFallsBackToFuseOnlyWhenTheNbdDriverIsMissing()
    {
        // Driver missing, FUSE usable: FUSE, with a warning that says why and what differs.
        Assert.Equal("fuse", DeviceDriverChoice.Choose(DeviceDriver.Auto, false, out var why, () => new NbdKernelModuleMissingException("no nbd"), () => null));
        Assert.Contains("not available", why);
        Assert.Contains("/dev/loopN", why);
        // Any other nbd problem is the nbd attach's to report: no fallback.
        Assert.Equal("kernel", DeviceDriverChoice.Choose(DeviceDriver.Auto, false, out why, () => new NbdPermissionDeniedException("not root"), () => null));
        Assert.Null(why);
        Assert.Equal("kernel", DeviceDriverChoice.Choose(DeviceDriver.Auto, false, out why, () => null, () => throw new InvalidOperationException("not asked")));
        // An nbd device asked for by name means the nbd driver.
        Assert.Equal("kernel", DeviceDriverChoice.Choose(DeviceDriver.Auto, true, out why, () => throw new InvalidOperationException("not asked"), () => null));
        // Neither: the nbd driver's absence, with FUSE's reason.
        var e = Assert.Throws<NbdKernelModuleMissingException>(() => DeviceDriverChoice.Choose(DeviceDriver.Auto, false, out _,
            () => new NbdKernelModuleMissingException("no nbd."), () => new Engine.Fuse.NbdFuseUnavailableException("no /dev/fuse")));
        Assert.Contains("no /dev/fuse", e.Message);
        // -Driver Fuse reports why FUSE cannot work before anything starts.
        Assert.Throws<Engine.Fuse.NbdLoopUnavailableException>(() => DeviceDriverChoice.Choose(DeviceDriver.Fuse, false, out _, null, () => new Engine.Fuse.NbdLoopUnavailableException("no loop")));
        Assert.Equal("kernel", DeviceDriverChoice.Choose(DeviceDriver.Nbd, false, out why, () => throw new InvalidOperationException("not asked"), null));
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

public sealed class OutputMapperTests
{
    [Theory]
    [InlineData("/dev/nbd3", 3)]
    [InlineData("nbd12", 12)]
    [InlineData("7", 7)]
    [InlineData("/dev/sda", null)]
    [InlineData("nbd", null)]
    public void ParsesDeviceArguments(string text, int? index) => Assert.Equal(index, Selection.ParseDevice(text));

    [Fact]
    public void SessionTakesHostPortAndExportFromTheBackendUri()
    {
        var info = new NbdDeviceInfo
        {
            Device = "/dev/nbd2", Index = 2, IsConnected = true, Size = 1 << 30, BlockSize = 4096, IsReadOnly = true,
            BackendIdentifier = "nbd://nas01:10810/backup", Connections = 2, TimeoutSeconds = 30, MountPoints = ["/mnt/b"],
            Mode = AttachMode.Netlink,
        };
        var s = OutputMapper.ToSession(info, null);
        Assert.Null(s.Scope);
        Assert.Equal("Connected", s.State);
        Assert.Equal(("/dev/nbd2", 2, "nas01", 10810, "backup"), (s.Device, s.Index, s.ComputerName, s.Port, s.ExportName));
        Assert.Equal("nbd://nas01:10810/backup", s.Uri);
        Assert.Equal(["/mnt/b"], s.MountPoints);
        Assert.Equal((2, 30, true, true), (s.Connections!.Value, s.Timeout!.Value, s.IsReadOnly, s.IsConnected));
        Assert.Equal("Netlink", s.Mode);
    }

    [Fact]
    public void DevicesOfOtherToolsWithoutUriStillMap()
    {
        var s = OutputMapper.ToSession(new NbdDeviceInfo { Device = "/dev/nbd0", Index = 0, IsConnected = true, Size = 512, BlockSize = 512, IsReadOnly = false }, null);
        Assert.Null(s.ComputerName);
        Assert.Null(s.Uri);
        Assert.Null(s.Mode);
        var d = OutputMapper.ToDevice(new NbdDeviceInfo { Device = "/dev/nbd1", Index = 1, IsConnected = false, Size = 0, BlockSize = 0, IsReadOnly = false });
        Assert.Equal("Free", d.State);
    }

    [Fact]
    public void ServiceOwnedTlsDevicesSayWhoRelaysThemAndKeepItAfterDisconnect()
    {
        var info = new NbdDeviceInfo
        {
            Device = "/dev/nbd4", Index = 4, IsConnected = true, Size = 1 << 20, BlockSize = 4096, IsReadOnly = false,
            BackendIdentifier = "nbds://nas01/secure", Mode = AttachMode.Netlink,
        };
        var owner = new DeviceStatus
        {
            Id = "abc", Kind = "kernel", Device = "/dev/nbd4", Index = 4, Uri = "nbds://nas01/secure", Transport = "TLS relay",
            Scope = HostScope.Service, ProcessId = 4242, IsPersistent = true,
            Counters = new Dictionary<string, long> { ["BytesToServer"] = 7 },
            History = [new DeviceEvent(DateTimeOffset.Now, "Attached", "attached")],
        };
        var s = OutputMapper.ToSession(info, owner);
        Assert.Equal(("Service", 4242, true, true), (s.Scope, s.OwnerProcessId!.Value, s.IsTlsRelayed, s.IsPersistent));
        Assert.Equal("TLS relay (NbdPowerShell service, pid 4242)", s.Transport);
        Assert.Equal(7, s.Counters["BytesToServer"]);
        Assert.Equal("Attached", Assert.Single(s.History).Event);
        // What Disconnect-NbdDevice -PassThru writes keeps every field but the state.
        var after = s with { IsConnected = false, State = "Disconnected", Changed = true };
        Assert.Equal((s.Transport, s.IsTls, s.IsTlsRelayed), (after.Transport, after.IsTls, after.IsTlsRelayed));
        var broken = OutputMapper.ToSession(info, owner with { State = "Broken", Message = "relay ended" });
        Assert.False(broken.IsTlsRelayed);
        Assert.Equal("relay ended", broken.StatusMessage);
    }

    [Fact]
    public void SupervisedDevicesShowStateServerReconnectsAndLastLoss()
    {
        var lost = DateTimeOffset.Now.AddMinutes(-3);
        var owner = new DeviceStatus
        {
            Id = "sup", Kind = "supervised", Device = "/dev/nbd2", Index = 2, State = "Reconnecting", Uri = "nbd://a/img", ActiveUri = "nbd://b/img",
            Scope = HostScope.Service, ProcessId = 4242, IsPersistent = true, Message = "lost its server",
            Counters = new Dictionary<string, long> { ["Reconnects"] = 2, ["Failovers"] = 1 },
            LastLossTime = lost, LastLossReason = "the server closed the connection",
        };
        var s = OutputMapper.ToSession(null, owner);
        Assert.Equal(("Reconnecting", "nbd://b/img", "nbd://a/img", 2), (s.State, s.ActiveUri, s.Uri, s.ReconnectCount!.Value));
        Assert.Equal((lost, "the server closed the connection", "lost its server"), (s.LastLossTime!.Value, s.LastLossReason, s.StatusMessage));
        Assert.Null(OutputMapper.ToSession(null, owner with { Kind = "kernel", Counters = new Dictionary<string, long>() }).ReconnectCount);
    }

    [Fact]
    public void FuseDevicesAreSessionsWithDriverFuseTheirFileAndStatistics()
    {
        var owner = new DeviceStatus
        {
            Id = "a1b2c3", Kind = "fuse", Device = "/dev/loop7", Index = 7, Uri = "nbd+unix:///disk?socket=/run/d.sock", ActiveUri = "nbd+unix:///disk?socket=/run/d.sock",
            Transport = "FUSE", Scope = HostScope.Service, ProcessId = 4242, Size = 1 << 30, BlockSize = 4096, IsReadOnly = true,
            MountPoints = ["/mnt/x"], BackingFile = "/run/nbdpowershell/fuse/a1b2c3/disk",
            Counters = new Dictionary<string, long> { ["Reads"] = 3, ["BytesRead"] = 12288 },
        };
        var s = OutputMapper.ToSession(null, owner);
        Assert.Equal(("Fuse", "/dev/loop7", 7, true, "Connected"), (s.Driver, s.Device, s.Index, s.IsConnected, s.State));
        Assert.Equal((1L << 30, 4096, true), (s.Size, s.BlockSize, s.IsReadOnly));
        Assert.Equal(["/mnt/x"], s.MountPoints);
        Assert.Equal("/run/nbdpowershell/fuse/a1b2c3/disk", s.BackingFile);
        Assert.Equal(("disk", "/run/d.sock"), (s.ExportName, s.SocketPath));
        Assert.Equal("FUSE and loop device (NbdPowerShell service, pid 4242)", s.Transport);
        Assert.Equal(12288, s.Counters["BytesRead"]);
        Assert.False(OutputMapper.ToSession(null, owner with { State = "Broken" }).IsConnected);
        Assert.Equal("Nbd", OutputMapper.ToSession(new NbdDeviceInfo { Device = "/dev/nbd0", Index = 0, IsConnected = true, Size = 512, BlockSize = 512, IsReadOnly = false }, null).Driver);
    }

    [Fact]
    public void EveryExportPropertyIsMappedFromTheHostRecord()
    {
        var info = new ExportInfo
        {
            Name = "n", Description = "d", Path = "/p", Backend = "file:/p", Size = 5, IsReadOnly = true, IsCopyOnWrite = true,
            ListenAddress = ["::1"], Port = 7, SocketPath = "/s", Listeners = ["[::1]:7", "/s"], AllowedClient = ["10.0.0.0/8"],
            MaxConnections = 3, State = "Failed", StatusMessage = "m", ClientCount = 2, TotalConnections = 9, StartTime = DateTimeOffset.UnixEpoch.AddDays(1),
            BytesRead = 11, BytesWritten = 12, Uri = "nbd://[::1]:7/n", TlsMode = "Allow", IsTlsOnly = true, CertificateSubject = "CN=x",
            CertificateThumbprint = "AB", RequiresClientCertificate = true, Scope = HostScope.Service, IsPersistent = true, ProcessId = 99,
        };
        var export = OutputMapper.ToExport(info, changed: true);
        foreach (var property in typeof(NbdExport).GetProperties())
        {
            if (property.Name == nameof(NbdExport.Changed))
            {
                Assert.True(export.Changed);
                continue;
            }
            var source = typeof(ExportInfo).GetProperty(property.Name);
            Assert.True(source is not null, $"NbdExport.{property.Name} has no source in ExportInfo");
            object? expected = source!.GetValue(info);
            object? actual = property.GetValue(export);
            if (expected is System.Collections.IEnumerable list and not string)
                Assert.Equal(list.Cast<object>(), ((System.Collections.IEnumerable)actual!).Cast<object>());
            else
                Assert.Equal(expected?.ToString(), actual?.ToString());
        }
    }
}
