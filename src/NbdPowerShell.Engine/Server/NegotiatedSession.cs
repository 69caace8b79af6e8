namespace NbdPowerShell.Engine.Server;

/// <summary>What negotiation agreed on, carried into the transmission phase.</summary>
internal sealed record NegotiatedSession(ServedExport Export, bool StructuredReplies, uint? BaseAllocationContextId);
