using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Server;

/// <summary>What to serve under one export name. The server takes ownership of <see cref="Store"/>.</summary>
public sealed class ExportDefinition
{
    public ExportDefinition(string name, IBlockStore store)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(store);
        if (System.Text.Encoding.UTF8.GetByteCount(name) > Protocol.NbdLimits.MaxStringLength)
            throw new ArgumentException("Export names are limited to 4096 bytes.", nameof(name));
        Name = name;
        Store = store;
    }

    /// <summary>Export name; the empty string is the default export (what EXPORT_NAME "" and GO "" select).</summary>
    public string Name { get; }

    public IBlockStore Store { get; }

    public string Description { get; init; } = "";

    /// <summary>Serve read-only even if the store accepts writes.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Most simultaneous connections in transmission; 0 = unlimited.</summary>
    public int MaxConnections { get; init; }

    /// <summary>Only clients that upgraded with STARTTLS may use (or see) this export. Needs server TLS.</summary>
    public bool TlsOnly { get; init; }

    /// <summary>Clients allowed to use this export; null = everyone the server admits.</summary>
    public AddressFilter? AllowedClients { get; init; }

    /// <summary>The listeners whose clients see this export; null = every listener. Sockets handed in directly see it always.</summary>
    public IReadOnlyCollection<Listener>? Listeners { get; init; }
}
