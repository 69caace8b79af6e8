using System.Buffers;
using System.Net.Security;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using NbdPowerShell.Engine.Interop;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>
/// The kernel only takes plain sockets, so a TLS connection is attached through a Unix socketpair: the kernel
/// holds one end, and this relay pumps bytes both ways between the other end and the TLS stream to the server
/// (what nbd-client's GnuTLS proxy does). When either side closes, both are shut down.
/// </summary>
public sealed class TlsRelay : IDisposable
{
    private const int BufferSize = 256 * 1024;
    private readonly Socket _local;
    private readonly Socket _remoteSocket;
    private readonly Stream _remote;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private int _closed;
    private long _toServer;
    private long _toKernel;

    private TlsRelay(Socket local, Socket remoteSocket, Stream remote, string description, ILogger logger)
    {
        _local = local;
        _remoteSocket = remoteSocket;
        _remote = remote;
        Description = description;
        _logger = logger;
        Completion = Task.WhenAll(Task.Run(PumpToServerAsync), Task.Run(PumpToKernelAsync)).ContinueWith(_ => Close(), TaskScheduler.Default);
    }

    /// <summary>
    /// Makes a socketpair, starts relaying between its second end and <paramref name="remote"/> (the TLS stream over
    /// <paramref name="remoteSocket"/>), and returns the first end for the kernel. The relay owns the rest.
    /// </summary>
    public static (Socket KernelEnd, TlsRelay Relay) Start(Socket remoteSocket, Stream remote, string description, ILogger logger)
    {
        var (kernelEnd, local) = Libc.SocketPair();
        return (kernelEnd, new TlsRelay(local, remoteSocket, remote, description, logger));
    }

    /// <summary>What is relayed, e.g. the export's nbds:// URI.</summary>
    public string Description { get; }

    /// <summary>Completes when the relay has stopped (either side closed, or <see cref="Stop"/>).</summary>
    public Task Completion { get; }

    public bool IsRunning => Volatile.Read(ref _closed) == 0;

    public long BytesToServer => Interlocked.Read(ref _toServer);

    public long BytesToKernel => Interlocked.Read(ref _toKernel);

    /// <summary>Kernel → server: requests and write payloads.</summary>
    private async Task PumpToServerAsync()
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            while (true)
            {
                int n = await _local.ReceiveAsync(buffer, SocketFlags.None, _stop.Token).ConfigureAwait(false);
                if (n == 0) break;
                await _remote.WriteAsync(buffer.AsMemory(0, n), _stop.Token).ConfigureAwait(false);
                await _remote.FlushAsync(_stop.Token).ConfigureAwait(false);
                Interlocked.Add(ref _toServer, n);
            }
            // The kernel closed its end (after NBD_CMD_DISC): end the TLS session politely.
            if (_remote is SslStream ssl)
                await ssl.ShutdownAsync().WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or TimeoutException or InvalidOperationException)
        {
            if (IsRunning && e is not OperationCanceledException) _logger.LogDebug("TLS relay for {Target}: kernel side ended: {Message}", Description, e.Message);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            Close();
        }
    }

    /// <summary>Server → kernel: replies and read payloads.</summary>
    private async Task PumpToKernelAsync()
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            while (true)
            {
                int n = await _remote.ReadAsync(buffer, _stop.Token).ConfigureAwait(false);
                if (n == 0) break;
                for (int sent = 0; sent < n;)
                    sent += await _local.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None, _stop.Token).ConfigureAwait(false);
                Interlocked.Add(ref _toKernel, n);
            }
            if (IsRunning) _logger.LogInformation("TLS relay for {Target}: the server closed the connection", Description);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
        {
            if (IsRunning && e is not OperationCanceledException) _logger.LogInformation("TLS relay for {Target}: server side ended: {Message}", Description, e.Message);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            Close();
        }
    }

    /// <summary>Shuts both sides down: the kernel sees its connection die, the server sees the TLS connection close.</summary>
    private void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _stop.Cancel();
        try { _local.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        try { _remoteSocket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        try { _remote.Dispose(); } catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
        _local.Dispose();
        _remoteSocket.Dispose();
    }

    /// <summary>Stops relaying now; I/O on the device fails until it is disconnected.</summary>
    public void Stop() => Close();

    /// <summary>Waits up to <paramref name="grace"/> for the relay to end by itself (the kernel closing its end), then stops it.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        try { await Completion.WaitAsync(grace).ConfigureAwait(false); }
        catch (TimeoutException) { Close(); }
        try { await Completion.ConfigureAwait(false); } catch (Exception e) when (e is not OutOfMemoryException) { }
    }

    public void Dispose() => Close();
}
