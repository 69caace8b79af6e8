using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Client;

/// <summary>
/// What a server told us about one export. Size and Flags are null when only LIST answered (no INFO);
/// block sizes are null when the server did not send NBD_INFO_BLOCK_SIZE.
/// </summary>
public sealed record NbdExportInfo
{
    public required string Name { get; init; }
    public string? Description { get; init; }
    public long? Size { get; init; }
    public TransmissionFlags? Flags { get; init; }
    public int? MinimumBlockSize { get; init; }
    public int? PreferredBlockSize { get; init; }
    public int? MaximumBlockSize { get; init; }

    public bool IsReadOnly => Flags is { } f && f.HasFlag(TransmissionFlags.ReadOnly);
    public bool CanMultiConn => Flags is { } f && f.HasFlag(TransmissionFlags.CanMultiConn);
}
