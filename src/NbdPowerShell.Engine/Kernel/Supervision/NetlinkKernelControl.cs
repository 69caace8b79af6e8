using Microsoft.Extensions.Logging;

namespace NbdPowerShell.Engine.Kernel.Supervision;

/// <summary>The real kernel: generic netlink "nbd" for STATUS and RECONFIGURE, its multicast group for LINK_DEAD, sysfs for the backend.</summary>
internal sealed class NetlinkKernelControl : INbdKernelControl
{
    private readonly object _gate = new();
    private readonly NbdLinkDeadListener _listener;
    private readonly bool _ownsListener;
    private readonly string _sysRoot;
    private readonly ILogger _logger;
    private NbdNetlinkFamily? _family;

    /// <param name="listener">A listener shared with other supervisors, or null to open one owned by this instance.</param>
    public NetlinkKernelControl(NbdLinkDeadListener? listener, ILogger logger, string sysRoot = "/sys")
    {
        _sysRoot = sysRoot;
        _logger = logger;
        _ownsListener = listener is null;
        _listener = listener ?? NbdLinkDeadListener.Open(logger);
    }

    public bool? IsConnected(int index)
    {
        try
        {
            IReadOnlyDictionary<int, bool> status;
            lock (_gate) status = Family().Status(index);
            return status.TryGetValue(index, out bool connected) && connected; // no entry: no such device
        }
        catch (Exception e) when (e is NetlinkException or TimeoutException or NbdKernelException)
        {
            _logger.LogWarning("NBD_CMD_STATUS for nbd{Index} failed: {Message}", index, e.Message);
            Reset();
            return null;
        }
    }

    public string? BackendIdentifier(int index)
    {
        string path = Path.Combine(_sysRoot, "block", $"nbd{index}", "backend");
        try { return File.Exists(path) ? File.ReadAllText(path).Trim() is { Length: > 0 } text ? text : null : null; }
        catch (IOException) { return null; }
    }

    public void Reconfigure(NbdNetlinkFamily.ReconfigureRequest request)
    {
        try
        {
            lock (_gate) Family().Reconfigure(request);
        }
        catch (TimeoutException) { Reset(); throw; }
    }

    public IDisposable WatchLinkDead(int index, Action<NbdLinkSignal> handler) => _listener.Subscribe(index, handler);

    /// <summary>One request socket per supervisor, opened on first use and again after a failure; used under _gate.</summary>
    private NbdNetlinkFamily Family()
    {
        lock (_gate)
            return _family ??= NbdNetlinkFamily.TryOpen()
                ?? throw new NbdKernelModuleMissingException("The kernel has no generic netlink family \"nbd\" (module unloaded?).");
    }

    private void Reset()
    {
        lock (_gate)
        {
            _family?.Dispose();
            _family = null;
        }
    }

    public void Dispose()
    {
        Reset();
        if (_ownsListener) _listener.Dispose();
    }
}
