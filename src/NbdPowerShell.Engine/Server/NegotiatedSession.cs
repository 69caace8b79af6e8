namespace NbdPowerShell.Engine.Server;

/// <summary>What negotiation agreed on, carried into the transmission phase.</summary>
/// <remarks>Transport and reader are the ones in use when negotiation ended: after STARTTLS they are the TLS ones.</remarks>
internal sealed record NegotiatedSession(ServedExport Export, bool StructuredReplies, uint? BaseAllocationContextId,
    NbdTransport Transport, BufferedReader Reader, bool Tls);
