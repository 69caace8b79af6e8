using NbdPowerShell.Engine.Kernel;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Kernel;

public class BlockSizeChoiceTests
{
    [Theory]
    [InlineData(64L << 20, null, null, null, 4096)]       // no constraints: 4096
    [InlineData(64L << 20, 1, 4096, null, 4096)]          // nbdkit
    [InlineData(64L << 20, 512, 512, null, 512)]          // preferred 512 is honoured
    [InlineData(64L << 20, 1, 65536, null, 4096)]         // never above the page size
    [InlineData(64L << 20, 65536, 65536, null, 4096)]     // a 64 KiB minimum cannot be met: page size
    [InlineData(64L << 20, 2048, 1024, null, 2048)]       // minimum wins over preferred
    [InlineData((64L << 20) + 1024, null, null, null, 1024)] // must divide the size
    [InlineData(64L << 20, null, null, 1024, 1024)]       // explicit request
    public void Picks_a_power_of_two_the_kernel_accepts(long size, int? min, int? preferred, int? requested, int expected) =>
        Assert.Equal(expected, KernelAttacher.ChooseBlockSize(size, min, preferred, requested, 4096));

    [Theory]
    [InlineData(256)]
    [InlineData(8192)]
    [InlineData(1000)]
    public void Rejects_a_bad_explicit_block_size(int requested) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => KernelAttacher.ChooseBlockSize(1 << 20, null, null, requested, 4096));
}
