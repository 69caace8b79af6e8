using NbdPowerShell.Engine.Protocol;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Protocol;

public class NbdErrorsTests
{
    [Theory]
    [InlineData(28, NbdError.NoSpace)]   // ENOSPC
    [InlineData(122, NbdError.NoSpace)]  // EDQUOT
    [InlineData(27, NbdError.NoSpace)]   // EFBIG
    [InlineData(30, NbdError.Perm)]      // EROFS
    [InlineData(13, NbdError.Perm)]      // EACCES
    [InlineData(5, NbdError.IO)]
    [InlineData(9, NbdError.IO)]         // EBADF is not a protocol value: it becomes EIO
    [InlineData(95, NbdError.NotSupported)]
    public void Errno_maps_to_the_values_the_protocol_allows(int errno, NbdError expected) =>
        Assert.Equal(expected, NbdErrors.FromErrno(errno));
}
