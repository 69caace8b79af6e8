using NbdPowerShell.Engine.Client;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>What to attach under supervision (<see cref="DeviceSupervisor.AttachAsync"/>); the attach turns it into a <see cref="SupervisionRecord"/>.</summary>
public sealed record SupervisedAttachRequest
{
    /// <summary>NBD URIs, tried in order at attach and on every loss. Several only with <see cref="ReadOnly"/>.</summary>
    public required IReadOnlyList<string> Servers { get; init; }

    /// <summary>Attach read-only (also the case when the export is read-only). Needed for failover between servers.</summary>
    public bool ReadOnly { get; init; }

    public int Connections { get; init; } = 1;

    /// <summary>NBD_ATTR_TIMEOUT in seconds; see <see cref="SupervisionRecord.RequestTimeoutSeconds"/>.</summary>
    public int RequestTimeoutSeconds { get; init; } = 10;

    /// <summary>NBD_ATTR_DEAD_CONN_TIMEOUT in seconds: how long I/O waits for a server to come back before it fails with EIO.</summary>
    public int DeadConnectionTimeoutSeconds { get; init; } = 120;

    public SupervisionTlsFiles? Tls { get; init; }

    /// <summary>Device index to use; null lets the kernel pick a free one.</summary>
    public int? Index { get; init; }

    /// <summary>Backend identifier for the kernel; null uses the URI of the server attached to.</summary>
    public string? BackendIdentifier { get; init; }

    /// <summary>Logical block size; null picks one as <see cref="KernelAttacher.ChooseBlockSize"/> does.</summary>
    public int? BlockSize { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> for a request that cannot be supervised.</summary>
    public void Validate()
    {
        if (Servers is null || Servers.Count == 0) throw new ArgumentException("Give at least one server URI.");
        string? name = null;
        foreach (var text in Servers)
        {
            if (!NbdUri.TryParse(text, out var uri))
                throw new ArgumentException($"'{text}' is not an NBD URI (nbd://host:port/export, nbd+unix:///export?socket=path, nbds://...).");
            if (name is not null && uri.ExportName != name)
                throw new ArgumentException($"Every server must serve the same export: '{text}' names '{uri.ExportName}', an earlier one '{name}'.");
            name = uri.ExportName;
        }
        if (Servers.Count > 1 && !ReadOnly)
            throw new ArgumentException("Failover between servers is only for read-only devices (writes acknowledged by one server are not on another); attach read-only or give one server.");
        if (Connections < 1) throw new ArgumentException($"Connections must be 1 or more (is {Connections}).");
        if (RequestTimeoutSeconds < 1) throw new ArgumentException("RequestTimeoutSeconds must be 1 or more: the kernel only requeues I/O of a dead connection when requests time out.");
        if (DeadConnectionTimeoutSeconds < 1) throw new ArgumentException("DeadConnectionTimeoutSeconds must be 1 or more: with 0 the kernel fails I/O at once instead of waiting for a reconnect.");
        Tls?.Validate();
    }
}
