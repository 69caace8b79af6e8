namespace NbdPowerShell;

// The objects the cmdlets emit. Property names equal the parameter names of the cmdlets that take them
// (Name, Device, Index, ComputerName, Port, ExportName, SocketPath), so piping binds by property name,
// also for deserialized copies from jobs and remoting. Booleans carry the Is* prefix.

/// <summary>An export served by this PowerShell process or by the NbdPowerShell service (Start-NbdExport, Get-NbdExport).</summary>
public sealed record NbdExport
{
    public string Name { get; init; } = "";
    public string Description { get; init; } = "";
    /// <summary>The file or block device served; null for memory exports.</summary>
    public string? Path { get; init; }
    /// <summary>What the engine serves, e.g. "file:/srv/disk.img", "memory", "cow:file:/srv/base.img".</summary>
    public string Backend { get; init; } = "";
    public long Size { get; init; }
    public bool IsReadOnly { get; init; }
    public bool IsCopyOnWrite { get; init; }
    /// <summary>The addresses of its TCP listeners; empty for Unix-socket-only exports.</summary>
    public string[] ListenAddress { get; init; } = [];
    /// <summary>The TCP port really listened on (the chosen one when -Port 0 was given); 0 for Unix-socket-only exports.</summary>
    public int Port { get; init; }
    public string? SocketPath { get; init; }
    /// <summary>Every listener it is served on: "127.0.0.1:10809", "[::1]:10809", "/run/disk.sock".</summary>
    public string[] Listeners { get; init; } = [];
    public string[] AllowedClient { get; init; } = [];
    public int MaxConnections { get; init; }
    /// <summary>Running while served; Stopped once Stop-NbdExport (or module removal) ended it; Failed for a persistent export the service could not start.</summary>
    public string State { get; init; } = "Running";
    /// <summary>Why a persistent export is not running (State Failed); null otherwise.</summary>
    public string? StatusMessage { get; init; }
    public int ClientCount { get; init; }
    /// <summary>Connections accepted since it started.</summary>
    public long TotalConnections { get; init; }
    public DateTimeOffset StartTime { get; init; }
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    /// <summary>How clients reach it: nbd://host:port/name or nbd+unix:///name?socket=path (nbds:// when TLS is required).</summary>
    public string Uri { get; init; } = "";
    /// <summary>None, Allow (STARTTLS offered) or Require (plain clients refused).</summary>
    public string TlsMode { get; init; } = "None";
    /// <summary>Only TLS clients see and open this export.</summary>
    public bool IsTlsOnly { get; init; }
    /// <summary>Subject of the server certificate (the private key is never shown).</summary>
    public string? CertificateSubject { get; init; }
    public string? CertificateThumbprint { get; init; }
    /// <summary>Clients must present a certificate from -ClientCertificateAuthority (mutual TLS).</summary>
    public bool RequiresClientCertificate { get; init; }
    /// <summary>Process (served by this PowerShell process, ends with it) or Service (served by the NbdPowerShell service).</summary>
    public string Scope { get; init; } = "Process";
    /// <summary>Kept in the service's configuration, so it comes back after a service restart or a reboot.</summary>
    public bool IsPersistent { get; init; }
    /// <summary>Process id of the process serving it (this pwsh, or the service).</summary>
    public int ProcessId { get; init; }
    /// <summary>
    /// From Start-NbdExport and Stop-NbdExport: true when the command changed something, false when the export
    /// already existed with this definition (Ansible's "changed"). Always false from Get-NbdExport.
    /// </summary>
    public bool Changed { get; init; }

    public override string ToString() => Uri;
}

/// <summary>An export a server lists (Find-NbdExport); pipe it to Connect-NbdDevice.</summary>
public sealed class NbdRemoteExport
{
    /// <summary>Host asked; null when the server was reached through a Unix socket.</summary>
    public string? ComputerName { get; init; }
    public int Port { get; init; }
    public string? SocketPath { get; init; }
    /// <summary>The export name; Connect-NbdDevice binds it to -ExportName (alias Name).</summary>
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    /// <summary>Size in bytes; null when the server only answered LIST (no INFO).</summary>
    public long? Size { get; init; }
    public bool IsReadOnly { get; init; }
    public bool CanMultiConnection { get; init; }
    public bool CanFlush { get; init; }
    public bool CanTrim { get; init; }
    public bool CanWriteZeroes { get; init; }
    public bool CanFastZero { get; init; }
    public bool CanCache { get; init; }
    public bool IsRotational { get; init; }
    /// <summary>The raw transmission flags, as text.</summary>
    public string Flags { get; init; } = "";
    public int? MinimumBlockSize { get; init; }
    public int? PreferredBlockSize { get; init; }
    public int? MaximumBlockSize { get; init; }
    /// <summary>True when the export was listed over TLS; Connect-NbdDevice binds it to -UseTls.</summary>
    public bool IsTls { get; init; }
    public string Uri { get; init; } = "";

    public override string ToString() => Uri;
}

/// <summary>An attached nbd device (Connect-NbdDevice, Get-NbdSession), whoever attached it.</summary>
public sealed record NbdSession
{
    public string Device { get; init; } = "";
    /// <summary>N of /dev/nbdN, or of /dev/loopN for Fuse devices.</summary>
    public int Index { get; init; }
    public string? ComputerName { get; init; }
    public int? Port { get; init; }
    public string? ExportName { get; init; }
    public string? SocketPath { get; init; }
    /// <summary>The NBD URI from the device's backend identifier (or its owner's record), when it is one.</summary>
    public string? Uri { get; init; }
    public long Size { get; init; }
    public int BlockSize { get; init; }
    public bool IsReadOnly { get; init; }
    public bool IsConnected { get; init; }
    /// <summary>Connected, Broken (its owner lost the relay or socketpair it needs), Disconnected, or Failed (a persistent device the service could not take back).</summary>
    public string State { get; init; } = "Connected";
    /// <summary>Why the device is not Connected, in words you can act on.</summary>
    public string? StatusMessage { get; init; }
    public int? Connections { get; init; }
    /// <summary>Request timeout in seconds, when the kernel shows it.</summary>
    public int? Timeout { get; init; }
    public string[] MountPoints { get; init; } = [];
    public string? BackendIdentifier { get; init; }
    /// <summary>Nbd: the kernel's nbd driver (/dev/nbdN). Fuse: a loop device (/dev/loopN) bound to a FUSE file the NbdPowerShell service serves.</summary>
    public string Driver { get; init; } = "Nbd";
    /// <summary>Fuse devices: the file in the service's FUSE mount that the loop device reads and writes; null for nbd devices.</summary>
    public string? BackingFile { get; init; }
    /// <summary>
    /// Who owns the device: Process (this pwsh serves its export over a socket pair or runs its ioctl thread),
    /// Service (the NbdPowerShell service relays or serves it), or null when no NbdPowerShell process does (the
    /// kernel holds it alone, or another tool attached it).
    /// </summary>
    public string? Scope { get; init; }
    /// <summary>Process id of the owner (this pwsh or the service); null when no NbdPowerShell process owns it.</summary>
    public int? OwnerProcessId { get; init; }
    /// <summary>Kept in the service's configuration and taken back after a service restart.</summary>
    public bool IsPersistent { get; init; }
    /// <summary>True when an export of this PowerShell process serves the device.</summary>
    public bool IsServedByThisProcess { get; init; }
    /// <summary>True when the device reaches its server over TLS (its backend identifier is an nbds:// URI).</summary>
    public bool IsTls { get; init; }
    /// <summary>True while an NbdPowerShell process (this one or the service) relays the device's TLS traffic.</summary>
    public bool IsTlsRelayed { get; init; }
    /// <summary>
    /// How the kernel's sockets reach the server: Plain, "TLS relay (this process)", "TLS relay (NbdPowerShell service,
    /// pid N)", "TLS relay (another process)", "Local socket pair (this process)" or "Local socket pair (NbdPowerShell service, pid N)".
    /// </summary>
    public string Transport { get; init; } = "Plain";
    /// <summary>The server the device uses now (differs from Uri only after a failover).</summary>
    public string? ActiveUri { get; init; }
    /// <summary>How the device was handed to the kernel: Netlink, Ioctl, or null when it cannot be told.</summary>
    public string? Mode { get; init; }
    /// <summary>The owner's counters, e.g. BytesToServer and BytesToKernel of a TLS relay; for Fuse devices Reads, Writes, Flushes, Zeroes, BytesRead, BytesWritten, Errors, InFlight, PeakInFlight, Reconnects and Connections.</summary>
    public IReadOnlyDictionary<string, long> Counters { get; init; } = new Dictionary<string, long>();
    /// <summary>What happened to the device, oldest first, as its owner recorded it.</summary>
    public NbdSessionEvent[] History { get; init; } = [];
    /// <summary>
    /// Supervised devices (Connect-NbdDevice -Persistent, several -Uri): connection losses healed so far; null for a
    /// device nobody supervises. State is then Connected, Reconnecting or Dead.
    /// </summary>
    public int? ReconnectCount { get; init; }
    /// <summary>Supervised devices: when the device last lost its server.</summary>
    public DateTimeOffset? LastLossTime { get; init; }
    /// <summary>Supervised devices: why it lost it (server closed or reset the connection, a request timed out, ...).</summary>
    public string? LastLossReason { get; init; }
    /// <summary>
    /// From Connect-NbdDevice and Disconnect-NbdDevice: true when the command attached or detached a device, false
    /// when the export was already attached and the existing session was returned (Ansible's "changed").
    /// </summary>
    public bool Changed { get; init; }

    public override string ToString() => Device;
}

/// <summary>One event in a device's life (NbdSession.History).</summary>
public sealed record NbdSessionEvent(DateTimeOffset Time, string Event, string Message)
{
    public override string ToString() => $"{Time:yyyy-MM-dd HH:mm:ss} {Event}: {Message}";
}

/// <summary>One /dev/nbdN node and whether it is free (Get-NbdDevice).</summary>
public sealed class NbdDevice
{
    public string Device { get; init; } = "";
    public int Index { get; init; }
    /// <summary>Free or Connected.</summary>
    public string State { get; init; } = "Free";
    public bool IsConnected { get; init; }
    public long Size { get; init; }
    public string? BackendIdentifier { get; init; }
    public string[] MountPoints { get; init; } = [];

    public override string ToString() => Device;
}

/// <summary>What Copy-NbdDisk did.</summary>
public sealed class NbdCopyResult
{
    /// <summary>The source's NBD URI or path.</summary>
    public string Source { get; init; } = "";
    /// <summary>The destination's NBD URI or path.</summary>
    public string Destination { get; init; } = "";
    /// <summary>Bytes copied: the source's size.</summary>
    public long Size { get; init; }
    public long BytesRead { get; init; }
    public long BytesWritten { get; init; }
    /// <summary>Bytes not written as data: holes in the source and all-zero blocks (zeroed on the destination, or already zero there).</summary>
    public long BytesSkipped { get; init; }
    /// <summary>Bytes of <see cref="BytesSkipped"/> made zero on the destination with zero requests.</summary>
    public long BytesZeroed { get; init; }
    public TimeSpan Duration { get; init; }
    /// <summary>Size divided by duration.</summary>
    public double BytesPerSecond { get; init; }
    public int SourceConnections { get; init; }
    public int DestinationConnections { get; init; }
    public int RequestSize { get; init; }
    /// <summary>True when the destination file did not exist and was created.</summary>
    public bool IsDestinationCreated { get; init; }
    /// <summary>True when the destination was flushed to stable storage (-Flush).</summary>
    public bool IsFlushed { get; init; }
    /// <summary>With -Verify: whether the hashes of source and destination match; null without -Verify.</summary>
    public bool? IsVerified { get; init; }
    public string? HashAlgorithm { get; init; }
    public string? SourceHash { get; init; }
    public string? DestinationHash { get; init; }

    public override string ToString() => $"{Source} -> {Destination}";
}

/// <summary>The content hash of a whole disk (Get-NbdDiskHash); equal to sha256sum (or the other algorithm's tool) of the raw image.</summary>
public sealed class NbdDiskHash
{
    public string Algorithm { get; init; } = "";
    /// <summary>Lower-case hex, as sha256sum prints it.</summary>
    public string Hash { get; init; } = "";
    /// <summary>The disk's NBD URI or path.</summary>
    public string Source { get; init; } = "";
    public long Size { get; init; }
    public long BytesRead { get; init; }
    /// <summary>Bytes hashed as zeroes without being read (holes).</summary>
    public long BytesSkipped { get; init; }
    public int Connections { get; init; }
    public TimeSpan Duration { get; init; }

    public override string ToString() => Hash;
}

/// <summary>The NbdPowerShell service: whether it runs, where its files are, what it serves (Get-NbdService).</summary>
public sealed record NbdService
{
    public bool IsRunning { get; init; }
    public int? ProcessId { get; init; }
    public string? Version { get; init; }
    public DateTimeOffset? StartTime { get; init; }
    public TimeSpan? Uptime { get; init; }
    /// <summary>The control socket (root only): $NBDPOWERSHELL_RUNTIME_DIR/control.sock, by default /run/nbdpowershell/control.sock.</summary>
    public string ControlSocket { get; init; } = "";
    /// <summary>The configuration file with the persistent exports and devices.</summary>
    public string ConfigurationPath { get; init; } = "";
    public string RuntimeDirectory { get; init; } = "";
    /// <summary>Where a service started on demand writes its log (under systemd: the journal).</summary>
    public string LogPath { get; init; } = "";
    public int ExportCount { get; init; }
    public int DeviceCount { get; init; }
    public int? ShutdownGraceSeconds { get; init; }
    /// <summary>The running service was started by systemd (the unit Install-NbdService writes).</summary>
    public bool IsSystemdManaged { get; init; }
    /// <summary>The systemd unit file exists.</summary>
    public bool IsInstalled { get; init; }
    public string UnitPath { get; init; } = "";
    /// <summary>systemd is this machine's init system (false in most containers and CI runners: there the service starts on demand).</summary>
    public bool IsSystemdRunning { get; init; }
    /// <summary>Configuration entries the service skipped and exports or devices that could not come back.</summary>
    public string[] Problems { get; init; } = [];
    /// <summary>What the service cleaned up when it started: FUSE mounts and loop devices an earlier service left when it crashed.</summary>
    public string[] CleanedUp { get; init; } = [];
    /// <summary>From Start-NbdService, Stop-NbdService, Install-NbdService and Uninstall-NbdService: whether the command changed something.</summary>
    public bool Changed { get; init; }

    public override string ToString() => IsRunning ? $"NbdPowerShell service (pid {ProcessId})" : "NbdPowerShell service (not running)";
}
