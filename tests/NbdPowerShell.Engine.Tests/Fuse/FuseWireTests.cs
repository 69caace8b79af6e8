using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NbdPowerShell.Engine.Fuse;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Fuse;

/// <summary>The FUSE message layouts against the sizes gcc reports for &lt;linux/fuse.h&gt; (protocol 7.38) on x86_64.</summary>
public sealed class FuseWireTests
{
    [Fact]
    public void Structs_have_the_kernel_sizes()
    {
        Assert.Equal(40, Unsafe.SizeOf<FuseInHeader>());
        Assert.Equal(16, Unsafe.SizeOf<FuseOutHeader>());
        Assert.Equal(64, Unsafe.SizeOf<FuseInitOut>());
        Assert.Equal(88, Unsafe.SizeOf<FuseAttr>());
        Assert.Equal(128, Unsafe.SizeOf<FuseEntryOut>());
        Assert.Equal(104, Unsafe.SizeOf<FuseAttrOut>());
        Assert.Equal(88, Unsafe.SizeOf<FuseSetAttrIn>());
        Assert.Equal(8, Unsafe.SizeOf<FuseOpenIn>());
        Assert.Equal(16, Unsafe.SizeOf<FuseOpenOut>());
        Assert.Equal(24, Unsafe.SizeOf<FuseReleaseIn>());
        Assert.Equal(40, Unsafe.SizeOf<FuseReadIn>());
        Assert.Equal(40, Unsafe.SizeOf<FuseWriteIn>());
        Assert.Equal(8, Unsafe.SizeOf<FuseWriteOut>());
        Assert.Equal(16, Unsafe.SizeOf<FuseFsyncIn>());
        Assert.Equal(32, Unsafe.SizeOf<FuseFallocateIn>());
        Assert.Equal(80, Unsafe.SizeOf<FuseStatFsOut>());
        Assert.Equal(24, Unsafe.SizeOf<FuseDirent>());
    }

    [Fact]
    public void Init_out_fields_sit_where_the_kernel_reads_them()
    {
        Assert.Equal(20, (int)Marshal.OffsetOf<FuseInitOut>(nameof(FuseInitOut.MaxWrite)));
        Assert.Equal(28, (int)Marshal.OffsetOf<FuseInitOut>(nameof(FuseInitOut.MaxPages)));
        Assert.Equal(32, (int)Marshal.OffsetOf<FuseInitOut>(nameof(FuseInitOut.Flags2)));
        Assert.Equal(60, (int)Marshal.OffsetOf<FuseAttr>(nameof(FuseAttr.Mode)));
    }
}

/// <summary>The loop ioctl structs against &lt;linux/loop.h&gt;.</summary>
public sealed class LoopWireTests
{
    [Fact]
    public void Loop_config_has_the_kernel_layout()
    {
        Assert.Equal(232, Unsafe.SizeOf<LoopDevice.LoopInfo64>());
        Assert.Equal(304, Unsafe.SizeOf<LoopDevice.LoopConfig>());
        Assert.Equal(8, (int)Marshal.OffsetOf<LoopDevice.LoopConfig>(nameof(LoopDevice.LoopConfig.Info)));
        Assert.Equal(52, (int)Marshal.OffsetOf<LoopDevice.LoopInfo64>(nameof(LoopDevice.LoopInfo64.Flags)));
    }
}
