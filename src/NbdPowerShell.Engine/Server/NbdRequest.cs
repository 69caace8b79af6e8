using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// One in-flight request. Instances are pooled per connection and handed to the connection's
/// workers directly, so steady-state serving allocates nothing per request.
/// </summary>
internal sealed class NbdRequest
{
    public NbdRequest(ClientConnection connection) => Connection = connection;

    public ClientConnection Connection { get; }
    public NbdCommand Command;
    public NbdCommandFlags Flags;
    public ulong Cookie;
    public ulong Offset;
    public uint Length;

    /// <summary>WRITE payload, rented from the shared pool; returned when the request completes.</summary>
    public byte[]? Payload;

    /// <summary>The payload is already in the store: received straight into a memory store's chunks.</summary>
    public bool PayloadInStore;

    /// <summary>Reused extent list for block status and hole-aware reads.</summary>
    public readonly List<Extent> Extents = new();

    /// <summary>Reused list of memory-store segments a read sends or a write receives into; cleared after use so it holds no chunk.</summary>
    public readonly List<MemorySegment> Segments = new();

    public void Execute() => Connection.Execute(this);
}
