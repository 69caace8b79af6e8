using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell;

/// <summary>Wrappers that Start-NbdExport puts around an opened store.</summary>
internal static class StoreFactory
{
    /// <summary>-CopyOnWrite: writes go to an overlay in memory; the base is opened read-only and never modified.</summary>
    public static IBlockStore CopyOnWrite(IBlockStore baseStore) =>
        CopyOnWriteBlockStore.WithMemoryOverlay(baseStore, ownsBase: true);
}
