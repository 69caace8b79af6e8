using Microsoft.Extensions.Logging;

namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// One way of giving the machine a block device for an export (kernel nbd driver, FUSE and loop, a supervised
/// nbd device, ...). Registered with a <see cref="DeviceRegistry"/> under its <see cref="Name"/>, which is also
/// the <see cref="DeviceRecord.Kind"/> of the devices it makes. See docs/service.md for how to add one.
/// </summary>
public interface IDeviceKind
{
    /// <summary>The discriminator written to the configuration, e.g. "kernel". Never change it once shipped.</summary>
    string Name { get; }

    /// <summary>Attaches a new device. Throws engine exceptions (they become the caller's error records).</summary>
    Task<IManagedDevice> AttachAsync(DeviceRequest request, DeviceContext context, CancellationToken cancellationToken);

    /// <summary>
    /// Takes back a device recorded by an earlier run of the service (after a restart or a reboot): find it, check it
    /// is still what the record says, and re-attach it if it is gone. Throws when it cannot; the registry then keeps
    /// the record, reports it and shows the device as Failed.
    /// </summary>
    Task<IManagedDevice> AdoptAsync(DeviceRecord record, DeviceContext context, CancellationToken cancellationToken);
}

/// <summary>A device a kind made or adopted, owned by one host until it is detached or the host stops.</summary>
public interface IManagedDevice
{
    /// <summary>Same as <see cref="Record"/>.Id; stable across restarts.</summary>
    string Id { get; }

    /// <summary>Its persisted form. When it changes (a new index after a re-attach), call <see cref="DeviceContext.RecordChanged"/>.</summary>
    DeviceRecord Record { get; }

    /// <summary>Kept in the configuration (only persistent devices are written there).</summary>
    bool IsPersistent { get; }

    /// <summary>A snapshot for Get-NbdSession; cheap and never throws.</summary>
    DeviceStatus GetStatus();

    /// <summary>True when this device already serves the request's export (Connect-NbdDevice is then idempotent).</summary>
    bool Serves(DeviceRequest request);

    /// <summary>Takes the device down (refusing a mounted one unless <paramref name="force"/>) and frees what it holds.</summary>
    Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken);

    /// <summary>
    /// The host stops (service shutdown): let go of what this process holds without detaching the device, so a
    /// later <see cref="IDeviceKind.AdoptAsync"/> can take it back.
    /// </summary>
    Task ReleaseAsync();
}

/// <summary>What a host gives the device kinds: its exports (for in-process attach), its logger and its identity.</summary>
public sealed class DeviceContext(NbdHost host, ILogger log, Action recordChanged)
{
    /// <summary>The host's exports, for attaching one of them over an in-process socketpair.</summary>
    public NbdHost Host { get; } = host;

    public ILogger Log { get; } = log;

    public HostScope Scope => Host.Scope;

    /// <summary>Call after a device's <see cref="IManagedDevice.Record"/> changed, so the service rewrites its configuration.</summary>
    public void RecordChanged() => recordChanged();
}
