using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>
/// Whether a freshly negotiated server may take over a supervised device. The kernel keeps the size, flags and
/// read-only state it was given at CONNECT whatever RECONFIGURE brings, so a server that differs would make I/O fail
/// or, worse, return other data: it is refused and the device is not reconfigured.
/// </summary>
public static class ServerAcceptance
{
    /// <summary>Commands a writable device may send and therefore needs from every server it is moved to.</summary>
    private const TransmissionFlags WriteCommands =
        TransmissionFlags.SendFlush | TransmissionFlags.SendFua | TransmissionFlags.SendTrim | TransmissionFlags.SendWriteZeroes;

    /// <summary>
    /// Flags a replacement server must advertise: for a writable device every write-side command the first server
    /// offered (the kernel sends them); CAN_MULTI_CONN when the device has several connections. A read-only device only
    /// reads (the kernel fails writes and flushes itself), so it needs nothing more.
    /// </summary>
    public static TransmissionFlags RequiredFlags(SupervisionRecord record)
    {
        var required = record.ReadOnly ? TransmissionFlags.None : record.TransmissionFlags & WriteCommands;
        if (record.Connections > 1) required |= TransmissionFlags.CanMultiConn;
        return required;
    }

    /// <summary>Null when the export the connection negotiated can back the device; otherwise why not.</summary>
    public static string? Check(SupervisionRecord record, NbdNegotiatedConnection connection)
    {
        ArgumentNullException.ThrowIfNull(record);
        ArgumentNullException.ThrowIfNull(connection);
        if (connection.ExportName != record.ExportName)
            return $"it serves export '{connection.ExportName}', not '{record.ExportName}'";
        if (connection.Size != record.Size)
            return $"its export is {connection.Size} bytes, the device is {record.Size} bytes";
        bool wasReadOnly = record.TransmissionFlags.HasFlag(TransmissionFlags.ReadOnly);
        if (connection.IsReadOnly != wasReadOnly)
            return connection.IsReadOnly ? "its export is now read-only; it was writable" : "its export is now writable; it was read-only";
        var missing = RequiredFlags(record) & ~connection.Flags;
        if (missing != TransmissionFlags.None)
            return $"it does not offer {missing}, which the device relies on";
        return null;
    }

    /// <summary>
    /// <see cref="Check"/>, then for a read-only device with a recorded fingerprint the content check (which reads
    /// the fingerprint blocks over <paramref name="connection"/>, so call it before handing the socket over).
    /// </summary>
    public static async Task<string?> CheckAsync(SupervisionRecord record, NbdNegotiatedConnection connection, CancellationToken ct)
    {
        if (Check(record, connection) is { } refusal) return refusal;
        if (!record.ReadOnly || record.ContentFingerprint is null) return null;
        string fingerprint = await ContentFingerprint.ComputeAsync(connection, ct).ConfigureAwait(false);
        return fingerprint == record.ContentFingerprint ? null
            : "its image has other content (content fingerprint differs from the one taken at attach)";
    }
}
