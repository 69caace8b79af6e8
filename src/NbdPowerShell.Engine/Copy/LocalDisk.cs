using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Copy;

/// <summary>
/// A local regular file or block device as a disk, through <see cref="FileBlockStore"/>: pread/pwrite on one
/// descriptor, SEEK_DATA/SEEK_HOLE for extents, punched holes (files) or BLKZEROOUT/discard (devices) for zeroes.
/// Calls complete synchronously on the calling thread.
/// </summary>
public sealed class LocalDisk : IDisk
{
    private LocalDisk(FileBlockStore store, string path, bool zeroed)
    {
        Store = store;
        Name = path;
        IsZeroed = zeroed;
    }

    internal FileBlockStore Store { get; }

    public string Name { get; }
    public long Size => Store.Size;
    public bool IsReadOnly => (Store.Capabilities & StoreCapabilities.Write) == 0;
    public bool IsBlockDevice => Store.IsBlockDevice;
    public bool ReportsExtents => (Store.Capabilities & StoreCapabilities.Extents) != 0;
    public int Alignment => Store.LogicalSectorSize;
    public int MaximumRequestSize => NbdPowerShell.Engine.Client.NbdBlockClient.DefaultMaximumRequestSize;
    public int Parallelism => 4;
    public int Connections => 1;
    public bool IsZeroed { get; private set; }

    /// <summary>Opens an existing file or block device; see <see cref="FileBlockStore.Open"/> for the exceptions.</summary>
    public static LocalDisk Open(string path, bool writable) => new(FileBlockStore.Open(path, readOnly: !writable), path, zeroed: false);

    /// <summary>Creates a new sparse file of <paramref name="size"/> bytes (it must not exist), reading as zeroes.</summary>
    public static LocalDisk Create(string path, long size)
    {
        using (var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            f.SetLength(size);
        try
        {
            return new(FileBlockStore.Open(path, readOnly: false), path, zeroed: true);
        }
        catch
        {
            File.Delete(path);
            throw;
        }
    }

    /// <summary>
    /// Makes [0, <paramref name="length"/>) of a file read as zeroes in one punch (or zero-range) call, so the copy
    /// can skip the source's holes; false where the file system cannot do it quickly, and for block devices.
    /// </summary>
    public bool TryZeroPrefix(long length)
    {
        if (IsBlockDevice || length == 0)
            return false;
        try
        {
            Store.WriteZeroes(0, length, mayPunch: true, fastOnly: true, fua: false);
        }
        catch (StorageException e) when (e.Errno == Libc.ENOTSUP)
        {
            return false;
        }
        IsZeroed = true;
        return true;
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        Store.Read(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        Store.Write(offset, data.Span, fua: false);
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroAsync(long offset, long length, CancellationToken ct)
    {
        Store.WriteZeroes(offset, length, mayPunch: true, fastOnly: false, fua: false);
        return ValueTask.CompletedTask;
    }

    public ValueTask GetExtentsAsync(long offset, long length, List<Extent> extents, CancellationToken ct)
    {
        Store.GetExtents(offset, length, extents, maxExtents: 4096);
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct)
    {
        Store.Flush();
        return ValueTask.CompletedTask;
    }

    public void Abort()
    {
        // Local calls finish on their own; the descriptor closes on dispose.
    }

    public ValueTask DisposeAsync()
    {
        Store.Dispose();
        return ValueTask.CompletedTask;
    }
}
