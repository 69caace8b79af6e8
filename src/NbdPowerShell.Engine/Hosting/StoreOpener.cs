using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// Opens the store an export serves: a memory disk, a file or block device, or a copy-on-write clone of one.
/// Every host (cmdlets in-process, the service, the bench host) opens stores here.
/// </summary>
public static class StoreOpener
{
    public static IBlockStore Open(ExportSpec spec) => Open(spec.Path, spec.MemorySize, spec.ReadOnly, spec.CopyOnWrite);

    /// <param name="path">File or block device; null opens a memory store of <paramref name="memorySize"/> bytes.</param>
    /// <param name="copyOnWrite">Writes go to a memory overlay; the base is opened read-only and never modified.</param>
    public static IBlockStore Open(string? path, long memorySize, bool readOnly, bool copyOnWrite)
    {
        if (path is null)
            return new MemoryBlockStore(memorySize);
        IBlockStore store = FileBlockStore.Open(path, readOnly: readOnly || copyOnWrite);
        if (!copyOnWrite)
            return store;
        try
        {
            return CopyOnWriteBlockStore.WithMemoryOverlay(store, ownsBase: true);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }
}
