using System.Net.Sockets;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Kernel.Supervision;

namespace NbdPowerShell.Engine.Tests.Kernel;

/// <summary>
/// The parts of the nbd driver a supervisor deals with, simulated on real sockets so the supervision logic can be
/// tested without the kernel module (the VM tests run the real thing). It keeps what drivers/block/nbd.c does:
/// RECONFIGURE gives each fd to the first socket slot marked dead and silently ignores the rest; a taken socket gets
/// the request timeout as its send timeout; a slot dies by a two-way shutdown of its socket followed by LINK_DEAD;
/// RECONFIGURE needs the device's backend identifier.
/// </summary>
internal sealed class SimulatedNbdKernel : INbdKernelControl
{
    private readonly object _gate = new();
    private readonly List<(int Index, Action<NbdLinkSignal> Handler)> _watchers = new();
    private readonly List<Slot> _slots;

    private sealed class Slot
    {
        public int Fd = -1;
        public bool Dead;
    }

    /// <param name="slots">Sockets of the device; they start "alive" but held by nobody we know (like an adopted device).</param>
    public SimulatedNbdKernel(int index, string backend, int slots)
    {
        Index = index;
        Backend = backend;
        _slots = Enumerable.Range(0, slots).Select(_ => new Slot()).ToList();
    }

    public int Index { get; }
    public string Backend { get; set; }
    public bool Connected { get; set; } = true;
    public ulong? TimeoutSeconds { get; private set; }
    public ulong? DeadConnTimeoutSeconds { get; private set; }
    public int Reconfigures { get; private set; }
    public int SocketsOffered { get; private set; }
    public int SocketsTaken { get; private set; }

    public int DeadSlots
    {
        get { lock (_gate) return _slots.Count(s => s.Dead); }
    }

    public bool? IsConnected(int index) => index == Index && Connected;

    public string? BackendIdentifier(int index) => index == Index && Connected ? Backend : null;

    public unsafe void Reconfigure(NbdNetlinkFamily.ReconfigureRequest request)
    {
        lock (_gate)
        {
            Reconfigures++;
            if (request.Index != Index || !Connected) throw new NetlinkException(22, "netlink request"); // EINVAL: not configured
            if (request.BackendIdentifier != Backend) throw new NetlinkException(22, "netlink request"); // backend mismatch
            if (request.TimeoutSeconds is ulong t) TimeoutSeconds = t;
            if (request.DeadConnTimeoutSeconds is ulong d) DeadConnTimeoutSeconds = d;
            long* timeval = stackalloc long[2];
            foreach (int fd in request.SocketFds)
            {
                SocketsOffered++;
                var slot = _slots.FirstOrDefault(s => s.Dead);
                if (slot is null) break; // -ENOSPC, reported as success
                int held = Libc.Fcntl(fd, Libc.F_DUPFD_CLOEXEC, 0);
                if (held < 0) throw new NetlinkException(Libc.LastErrno, "sockfd_lookup");
                if (TimeoutSeconds is ulong timeout)
                {
                    timeval[0] = (long)timeout;
                    timeval[1] = 0;
                    Libc.SetSockOpt(held, Libc.SOL_SOCKET, Libc.SO_SNDTIMEO, timeval, 2 * sizeof(long));
                }
                if (slot.Fd >= 0) Libc.Close(slot.Fd);
                slot.Fd = held;
                slot.Dead = false;
                SocketsTaken++;
            }
        }
    }

    /// <summary>Marks a slot dead as the driver does on a receive error: shut the socket down both ways, then LINK_DEAD.</summary>
    public void KillSlot(int slot, bool notify = true)
    {
        lock (_gate)
        {
            var s = _slots[slot];
            if (s.Fd >= 0)
            {
                using var socket = new Socket(new SafeSocketHandle(s.Fd, ownsHandle: false));
                socket.Shutdown(SocketShutdown.Both);
            }
            s.Dead = true;
        }
        if (notify) Signal(new NbdLinkSignal(Index, false));
    }

    public void Signal(NbdLinkSignal signal)
    {
        (int Index, Action<NbdLinkSignal> Handler)[] watchers;
        lock (_gate) watchers = _watchers.ToArray();
        foreach (var (index, handler) in watchers)
            if (signal.MissedNotifications || index == signal.Index) handler(signal with { Index = index });
    }

    public IDisposable WatchLinkDead(int index, Action<NbdLinkSignal> handler)
    {
        var entry = (index, handler);
        lock (_gate) _watchers.Add(entry);
        return new Unsubscribe(() => { lock (_gate) _watchers.Remove(entry); });
    }

    private sealed class Unsubscribe(Action action) : IDisposable
    {
        public void Dispose() => action();
    }

    public void Dispose()
    {
        lock (_gate)
            foreach (var s in _slots)
                if (s.Fd >= 0)
                {
                    Libc.Close(s.Fd);
                    s.Fd = -1;
                }
    }
}
