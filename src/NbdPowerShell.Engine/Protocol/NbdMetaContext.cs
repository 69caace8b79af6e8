namespace NbdPowerShell.Engine.Protocol;

public static class NbdMetaContext
{
    /// <summary>The only meta context this implementation serves.</summary>
    public const string BaseAllocation = "base:allocation";
    public const string BaseNamespace = "base:";
}
