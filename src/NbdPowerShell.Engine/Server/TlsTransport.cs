using System.Net;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace NbdPowerShell.Engine.Server;

/// <summary>
/// Transport after STARTTLS: an SslStream over the original socket. SslStream cannot send a
/// header and body in one record, so small replies are coalesced into one write.
/// </summary>
internal sealed class TlsTransport : NbdTransport
{
    private const int CoalesceLimit = 16 * 1024;

    private readonly NbdTransport _inner;
    private readonly SslStream _stream;
    private readonly byte[] _scratch = new byte[CoalesceLimit];

    private TlsTransport(NbdTransport inner, SslStream stream)
    {
        _inner = inner;
        _stream = stream;
    }

    public override EndPoint? RemoteEndPoint => _inner.RemoteEndPoint;

    public override bool PeerIsLocal => _inner.PeerIsLocal;

    public override long BytesReceived => _inner.BytesReceived;

    public X509Certificate? ClientCertificate => _stream.RemoteCertificate;

    /// <summary>Runs the server side of the TLS handshake over <paramref name="inner"/>; throws AuthenticationException on failure.</summary>
    public static TlsTransport Accept(NbdTransport inner, TlsOptions options)
    {
        var stream = new SslStream(new TransportStream(inner), leaveInnerStreamOpen: true);
        var authorities = options.ClientCertificateAuthorities;
        var auth = new SslServerAuthenticationOptions
        {
            ServerCertificate = options.ServerCertificate,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateRequired = authorities != null,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            RemoteCertificateValidationCallback = authorities == null
                ? null
                : (_, certificate, _, _) => certificate != null && ChainsTo(certificate, authorities),
        };
        try
        {
            stream.AuthenticateAsServer(auth);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
        return new TlsTransport(inner, stream);
    }

    /// <summary>Wraps the client side of a TLS session (the handshake ran already, over the socket under <paramref name="inner"/>).</summary>
    public static TlsTransport ForClient(NbdTransport inner, SslStream stream) => new(inner, stream);

    private static bool ChainsTo(X509Certificate certificate, X509Certificate2Collection authorities)
    {
        using var leaf = new X509Certificate2(certificate);
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid("1.3.6.1.5.5.7.3.2")); // client auth
        return chain.Build(leaf);
    }

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return _stream.Read(buffer);
        }
        catch (IOException)
        {
            return 0;
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
    }

    public override void Write(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body)
    {
        if (head.Length + body.Length <= CoalesceLimit)
        {
            head.CopyTo(_scratch);
            body.CopyTo(_scratch.AsSpan(head.Length));
            _stream.Write(_scratch, 0, head.Length + body.Length);
        }
        else
        {
            _stream.Write(head);
            _stream.Write(body);
        }
        _stream.Flush();
    }

    public override void Shutdown() => _inner.Shutdown();

    public override void ShutdownSend() => _inner.ShutdownSend();

    public override void DrainUntilClosed(TimeSpan timeout) => _inner.DrainUntilClosed(timeout);

    public override void Dispose()
    {
        try { _stream.Dispose(); }
        catch (IOException) { }
        _inner.Dispose();
    }

    /// <summary>Adapts a transport to the Stream SslStream wants underneath.</summary>
    private sealed class TransportStream : Stream
    {
        private readonly NbdTransport _transport;

        public TransportStream(NbdTransport transport) => _transport = transport;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => _transport.Read(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer) => _transport.Read(buffer);
        public override void Write(byte[] buffer, int offset, int count) => _transport.Write(buffer.AsSpan(offset, count), default);
        public override void Write(ReadOnlySpan<byte> buffer) => _transport.Write(buffer, default);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
