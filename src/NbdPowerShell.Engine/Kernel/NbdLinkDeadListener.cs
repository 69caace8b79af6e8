using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace NbdPowerShell.Engine.Kernel;

/// <summary>What the kernel said about one device: a connection died, or notifications may have been lost.</summary>
/// <param name="Index">The device index (/dev/nbdN).</param>
/// <param name="MissedNotifications">
/// True when the listener's socket overflowed (ENOBUFS) and the kernel dropped notifications: every subscriber gets
/// this, because any device may have lost a connection unseen.
/// </param>
public readonly record struct NbdLinkSignal(int Index, bool MissedNotifications);

/// <summary>
/// Joins the multicast group "nbd_mc_group" of the generic netlink family "nbd" and reports LINK_DEAD notifications
/// (the kernel sends them when a socket of a device fails by error or timeout, not for a requested disconnect).
/// One thread per listener; a host with many supervised devices can share one listener between them.
/// </summary>
public sealed class NbdLinkDeadListener : IDisposable
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);
    private readonly GenericNetlinkSocket _socket;
    private readonly ushort _familyId;
    private readonly ILogger _logger;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private readonly List<(int Index, Action<NbdLinkSignal> Handler)> _subscribers = new();
    private volatile bool _stopping;

    private NbdLinkDeadListener(GenericNetlinkSocket socket, ushort familyId, ILogger logger)
    {
        _socket = socket;
        _familyId = familyId;
        _logger = logger;
        _thread = new Thread(Run) { IsBackground = true, Name = "nbd LINK_DEAD listener" };
        _thread.Start();
    }

    /// <summary>Opens a netlink socket, joins the nbd multicast group and starts listening.</summary>
    /// <exception cref="NbdKernelModuleMissingException">The kernel has no "nbd" family or it has no multicast group.</exception>
    public static NbdLinkDeadListener Open(ILogger? logger = null)
    {
        var socket = GenericNetlinkSocket.Open();
        try
        {
            var family = socket.DescribeFamily(NbdNetlinkFamily.FamilyName)
                ?? throw new NbdKernelModuleMissingException("The kernel has no generic netlink family \"nbd\"; load the module with: modprobe nbd.");
            if (!family.Groups.TryGetValue(NbdNetlinkFamily.MulticastGroupName, out uint group))
                throw new NbdKernelModuleMissingException($"The kernel's \"nbd\" netlink family has no multicast group \"{NbdNetlinkFamily.MulticastGroupName}\", so connection loss cannot be watched (kernel too old).");
            socket.JoinGroup(group);
            return new NbdLinkDeadListener(socket, family.Id, logger ?? NullLogger.Instance);
        }
        catch (NetlinkException e)
        {
            socket.Dispose();
            throw new NbdKernelException($"Cannot listen for nbd connection-loss notifications: {e.Message}", e.Errno, e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Calls <paramref name="handler"/> on the listener thread for every LINK_DEAD of device <paramref name="index"/>
    /// and on every overrun. The handler must return quickly (signal a waiting task). Dispose the result to unsubscribe.
    /// </summary>
    public IDisposable Subscribe(int index, Action<NbdLinkSignal> handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        var entry = (index, handler);
        lock (_gate) _subscribers.Add(entry);
        return new Subscription(this, entry);
    }

    private void Unsubscribe((int, Action<NbdLinkSignal>) entry)
    {
        lock (_gate) _subscribers.Remove(entry);
    }

    private void Run()
    {
        var buffer = new byte[64 * 1024];
        while (!_stopping)
        {
            List<(ushort Type, byte[] Payload)> messages;
            bool overrun;
            try { (messages, overrun) = _socket.ReceiveNotifications(PollInterval, buffer); }
            catch (Exception e) when (e is NetlinkException or ObjectDisposedException)
            {
                if (_stopping) return;
                _logger.LogError("The nbd LINK_DEAD listener failed ({Message}); connection loss is now noticed by polling only", e.Message);
                return;
            }
            if (overrun)
            {
                _logger.LogWarning("The nbd LINK_DEAD listener missed notifications (receive buffer overflow); every watched device checks its connections");
                Dispatch(null);
            }
            foreach (var (type, payload) in messages)
                if (type == _familyId && NbdNetlinkFamily.ParseLinkDead(payload) is int index)
                    Dispatch(index);
        }
    }

    private void Dispatch(int? index)
    {
        (int Index, Action<NbdLinkSignal> Handler)[] targets;
        lock (_gate) targets = _subscribers.ToArray();
        foreach (var (subscribed, handler) in targets)
        {
            if (index is int i && i != subscribed) continue;
            try { handler(new NbdLinkSignal(subscribed, index is null)); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                _logger.LogError(e, "A LINK_DEAD handler for nbd{Index} threw", subscribed);
            }
        }
    }

    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        if (Thread.CurrentThread != _thread) _thread.Join(PollInterval * 4);
        _socket.Dispose();
    }

    private sealed class Subscription(NbdLinkDeadListener owner, (int, Action<NbdLinkSignal>) entry) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) owner.Unsubscribe(entry);
        }
    }
}
