using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell;

/// <summary>The hosts the cmdlets hand their work to.</summary>
internal static class Hosts
{
    /// <summary>Exports and in-process attachments of this pwsh process: they end with it.</summary>
    public static NbdHost Process { get; } = new(HostScope.Process, EngineLog.Default);
}
