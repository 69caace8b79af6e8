namespace NbdPowerShell.Engine.Server;

/// <summary>Why a server operation was refused; the PowerShell layer maps each reason to an error id.</summary>
public enum NbdServerError
{
    ExportAlreadyExists,
    ExportNotFound,
    ExportBusy,
    AddressInUse,
    PermissionDenied,
    InvalidAddress,
    Stopped,
}

public sealed class NbdServerException : Exception
{
    public NbdServerException(NbdServerError reason, string message, Exception? inner = null) : base(message, inner) =>
        Reason = reason;

    public NbdServerError Reason { get; }
}
