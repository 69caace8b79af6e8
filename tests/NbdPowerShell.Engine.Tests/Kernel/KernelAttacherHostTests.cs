using System.Net.Sockets;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Protocol;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>Checks the attacher makes before touching the kernel; they run anywhere.</summary>
public class KernelAttacherHostTests
{
    [Fact]
    public async Task Several_connections_without_multi_conn_are_refused_up_front()
    {
        var (a, b) = (new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified), new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified));
        var e = await Assert.ThrowsAsync<NbdMultiConnNotSupportedException>(() =>
            new KernelAttacher().AttachAsync([a, b], 1 << 20, TransmissionFlags.HasFlags | TransmissionFlags.SendFlush, new AttachOptions()));
        Assert.Contains("CAN_MULTI_CONN", e.Message);
        Assert.Equal("NbdMultiConnNotSupported", e.ErrorId);
        Assert.Throws<ObjectDisposedException>(() => a.Available); // the attacher owns (and closed) the sockets
    }

    [Fact]
    public void Kernel_exceptions_carry_the_cmdlet_error_ids()
    {
        Assert.Equal("NbdKernelModuleMissing", new NbdKernelModuleMissingException("x").ErrorId);
        Assert.Equal("NbdPermissionDenied", new NbdPermissionDeniedException("x").ErrorId);
        Assert.Equal("NbdDeviceBusy", new NbdDeviceBusyException(1, "x").ErrorId);
        Assert.Equal("NbdDeviceNotFound", new NbdDeviceNotFoundException(1, "x").ErrorId);
        Assert.Equal("NbdDeviceMounted", new NbdDeviceMountedException(1, [], [], "x").ErrorId);
        Assert.Equal("NbdPlatformNotSupported", new NbdPlatformNotSupportedException("x").ErrorId);
    }

    [Fact]
    public void Module_check_on_a_tree_without_nbd_says_how_to_load_it()
    {
        string root = Path.Combine(Path.GetTempPath(), $"nbdps-nomod-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(root, "module"));
        try
        {
            var e = Assert.Throws<NbdKernelModuleMissingException>(() => KernelPreconditions.EnsureModuleLoaded(root));
            Assert.Contains("modprobe nbd", e.Message);
        }
        finally { Directory.Delete(root, true); }
    }
}
