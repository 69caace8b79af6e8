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

    /// <summary>Reused extent list for block status and hole-aware reads.</summary>
    public readonly List<Extent> Extents = new();

    public void Execute() => Connection.Execute(this);
}
