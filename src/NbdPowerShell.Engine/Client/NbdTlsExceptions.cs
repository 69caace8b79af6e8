namespace NbdPowerShell.Engine.Client;

/// <summary>TLS was asked for, but the server refused STARTTLS (ERR_POLICY or ERR_UNSUP): it does not offer TLS.</summary>
public sealed class NbdTlsNotSupportedException : NbdClientException
{
    public NbdTlsNotSupportedException(string message) : base(message) { }
}

/// <summary>The TLS handshake after STARTTLS failed for a reason other than the server certificate (protocol, client certificate refused, connection lost).</summary>
public class NbdTlsHandshakeException : NbdClientException
{
    public NbdTlsHandshakeException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The server certificate was not accepted: untrusted authority, name mismatch, expired, or missing.</summary>
public sealed class NbdCertificateValidationException : NbdTlsHandshakeException
{
    public NbdCertificateValidationException(string reason, string message, Exception? inner = null) : base(message, inner) => Reason = reason;

    /// <summary>What failed, e.g. "the certificate does not chain to a trusted authority".</summary>
    public string Reason { get; }
}
