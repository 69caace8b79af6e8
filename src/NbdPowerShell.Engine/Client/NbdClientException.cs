using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell.Engine.Client;

/// <summary>Base of every error the NBD client raises; the PowerShell layer maps the subclasses to error ids.</summary>
public class NbdClientException : Exception
{
    public NbdClientException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The server answered an option with an error reply (bit 31 set).</summary>
public class NbdOptionErrorException : NbdClientException
{
    public NbdOption Option { get; }
    public NbdOptionReplyType ReplyType { get; }
    /// <summary>Free-text message the server attached to the error, if any.</summary>
    public string? ServerMessage { get; }

    public NbdOptionErrorException(NbdOption option, NbdOptionReplyType replyType, string? serverMessage, string message)
        : base(message)
    {
        Option = option;
        ReplyType = replyType;
        ServerMessage = serverMessage;
    }
}

/// <summary>NBD_REP_ERR_UNKNOWN: no export of that name (or the server hung up on EXPORT_NAME).</summary>
public sealed class NbdExportNotFoundException : NbdOptionErrorException
{
    public string ExportName { get; }
    public NbdExportNotFoundException(string exportName, NbdOption option, string? serverMessage, string message)
        : base(option, NbdOptionReplyType.ErrUnknown, serverMessage, message) => ExportName = exportName;
}

/// <summary>NBD_REP_ERR_POLICY: the server refuses this client or option by configuration.</summary>
public sealed class NbdPolicyRefusedException : NbdOptionErrorException
{
    public NbdPolicyRefusedException(NbdOption option, string? serverMessage, string message)
        : base(option, NbdOptionReplyType.ErrPolicy, serverMessage, message) { }
}

/// <summary>NBD_REP_ERR_TLS_REQD: the server only talks over TLS.</summary>
public sealed class NbdTlsRequiredException : NbdOptionErrorException
{
    public NbdTlsRequiredException(NbdOption option, string? serverMessage, string message)
        : base(option, NbdOptionReplyType.ErrTlsRequired, serverMessage, message) { }
}

/// <summary>NBD_REP_ERR_SHUTDOWN: the server is going down.</summary>
public sealed class NbdServerShutdownException : NbdOptionErrorException
{
    public NbdServerShutdownException(NbdOption option, string? serverMessage, string message)
        : base(option, NbdOptionReplyType.ErrShutdown, serverMessage, message) { }
}

/// <summary>The peer broke the protocol: wrong magic, an oldstyle server, malformed or unexpected replies.</summary>
public sealed class NbdProtocolException : NbdClientException
{
    public NbdProtocolException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Connect or negotiation did not finish within the configured timeout.</summary>
public sealed class NbdTimeoutException : NbdClientException
{
    public TimeSpan Timeout { get; }
    public NbdTimeoutException(string message, TimeSpan timeout, Exception? inner = null) : base(message, inner) => Timeout = timeout;
}

/// <summary>Nothing listens at the address (ECONNREFUSED, or no Unix socket at the path).</summary>
public sealed class NbdConnectionRefusedException : NbdClientException
{
    public NbdConnectionRefusedException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Other connection failures: name resolution, resets, the peer closing mid-message.</summary>
public sealed class NbdConnectionException : NbdClientException
{
    public NbdConnectionException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A transmission-phase request failed with an error value from the server.</summary>
public sealed class NbdCommandException : NbdClientException
{
    public NbdCommand Command { get; }
    public NbdError Error { get; }
    public NbdCommandException(NbdCommand command, NbdError error, string message) : base(message)
    {
        Command = command;
        Error = error;
    }
}
