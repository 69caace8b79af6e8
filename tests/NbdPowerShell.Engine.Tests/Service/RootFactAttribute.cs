using NbdPowerShell.Engine.Interop;
using Xunit;

namespace NbdPowerShell.Engine.Tests.Service;

/// <summary>A fact that runs a client as another user (setpriv to nobody): skipped with the reason when it cannot.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (Libc.GetEuid() != 0) Skip = "Running a client as nobody needs root (setpriv).";
        else if (!File.Exists("/usr/bin/setpriv")) Skip = "setpriv (util-linux) is missing.";
        else if (!File.Exists("/usr/bin/python3")) Skip = "/usr/bin/python3 is missing (the raw control client runs in it).";
    }
}
