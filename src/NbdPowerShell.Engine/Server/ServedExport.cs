using System.Collections.Concurrent;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>An export while it is being served: its definition, the flags it advertises, its live connections and counters.</summary>
internal sealed class ServedExport
{
    private readonly ConcurrentDictionary<long, ClientConnection> _connections = new();
    private long _totalConnections;
    private int _slotsInUse;

    public ServedExport(ExportDefinition definition)
    {
        Definition = definition;
        var caps = definition.Store.Capabilities;
        IsReadOnly = definition.ReadOnly || !caps.HasFlag(StoreCapabilities.Write);
        Flags = ComputeFlags(caps, IsReadOnly);
    }

    public ExportDefinition Definition { get; }
    public string Name => Definition.Name;
    public IBlockStore Store => Definition.Store;
    public long Size => Definition.Store.Size;
    public bool IsReadOnly { get; }
    public DateTimeOffset AddedAt { get; } = DateTimeOffset.UtcNow;
    // Counts of connections that have closed; live ones are added in at snapshot time, so requests
    // only ever update their own connection's counters (one shared counter set was a cache line
    // every request on every connection wrote twice).
    private readonly IoCounters _closedConnections = new();

    /// <summary>Flags for clients without structured replies; DF is added per connection when they are negotiated.</summary>
    public TransmissionFlags Flags { get; }

    public int ConnectionCount => _connections.Count;

    public IEnumerable<ClientConnection> Connections => _connections.Values;

    public TransmissionFlags FlagsFor(bool structuredReplies) =>
        structuredReplies ? Flags | TransmissionFlags.SendDf : Flags;

    /// <summary>Advertise exactly what the store does: these flags set the kernel's write-cache and discard behaviour.</summary>
    internal static TransmissionFlags ComputeFlags(StoreCapabilities caps, bool readOnly)
    {
        var flags = TransmissionFlags.HasFlags | TransmissionFlags.SendCache;
        if (caps.HasFlag(StoreCapabilities.Flush))
            flags |= TransmissionFlags.SendFlush;
        if (caps.HasFlag(StoreCapabilities.Rotational))
            flags |= TransmissionFlags.Rotational;
        if (caps.HasFlag(StoreCapabilities.MultiConnCoherent))
            flags |= TransmissionFlags.CanMultiConn;
        if (readOnly)
            return flags | TransmissionFlags.ReadOnly;
        if (caps.HasFlag(StoreCapabilities.Fua))
            flags |= TransmissionFlags.SendFua;
        if (caps.HasFlag(StoreCapabilities.Trim))
            flags |= TransmissionFlags.SendTrim;
        if (caps.HasFlag(StoreCapabilities.WriteZeroes))
        {
            flags |= TransmissionFlags.SendWriteZeroes;
            if (caps.HasFlag(StoreCapabilities.FastZero))
                flags |= TransmissionFlags.SendFastZero;
        }
        return flags;
    }

    /// <summary>Set once the export is being removed: no connection may attach after that.</summary>
    public bool Removed => Volatile.Read(ref _removed) != 0;
    private int _removed;

    /// <summary>
    /// Marks the export removed and returns the connections that attached before. Without
    /// <paramref name="force"/> it refuses (returning the connected clients) when any are attached;
    /// the check and the flag share the lock TryAttach uses, so no GO slips in between.
    /// </summary>
    public bool TryMarkRemoved(bool force, out ClientConnection[] attached)
    {
        lock (_connections)
        {
            attached = _connections.Values.ToArray();
            if (attached.Length > 0 && !force)
                return false;
            Volatile.Write(ref _removed, 1);
            return true;
        }
    }

    /// <summary>Takes a connection slot, honouring MaxConnections; fails once the export is being removed.</summary>
    public bool TryAttach(ClientConnection connection)
    {
        int max = Definition.MaxConnections;
        while (true)
        {
            int used = Volatile.Read(ref _slotsInUse);
            if (max > 0 && used >= max)
                return false;
            if (Interlocked.CompareExchange(ref _slotsInUse, used + 1, used) == used)
                break;
        }
        // Registering under the same lock as MarkRemoved means a removal either sees this
        // connection (and stops it) or this attach sees the removal (and backs out).
        lock (_connections)
        {
            if (Removed)
            {
                Interlocked.Decrement(ref _slotsInUse);
                return false;
            }
            _connections[connection.Id] = connection;
        }
        Interlocked.Increment(ref _totalConnections);
        return true;
    }

    public void Detach(ClientConnection connection)
    {
        lock (_connections)
        {
            if (!_connections.TryRemove(connection.Id, out _))
                return;
            _closedConnections.Add(connection.Counters);
        }
        Interlocked.Decrement(ref _slotsInUse);
    }

    /// <summary>Everything counted on this export: closed connections plus the live ones, read under the lock Detach moves counts with.</summary>
    public IoStatistics Io
    {
        get
        {
            var total = new IoCounters();
            lock (_connections)
            {
                total.Add(_closedConnections);
                foreach (var connection in _connections.Values)
                    total.Add(connection.Counters);
            }
            return total.Snapshot();
        }
    }

    public ExportSnapshot Snapshot() => new(
        Name, Definition.Description, Store.Description, Size, IsReadOnly, Flags, Definition.MaxConnections,
        Definition.AllowedClients?.Entries, AddedAt, Interlocked.Read(ref _totalConnections), Io,
        _connections.Values.Select(c => c.Snapshot()).OrderBy(c => c.Id).ToArray());
}
