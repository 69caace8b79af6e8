namespace NbdPowerShell.Engine.Hosting.Devices;

/// <summary>
/// A recorded device that could not be taken back (unknown kind, or its adoption failed). It keeps the record so
/// the configuration loses nothing, shows as Failed in Get-NbdSession, and Disconnect-NbdDevice forgets it.
/// </summary>
internal sealed class UnadoptedDevice(DeviceRecord record, string message, HostScope scope) : IManagedDevice
{
    public string Id => Record.Id;

    public DeviceRecord Record { get; } = record;

    public bool IsPersistent => true;

    public DeviceStatus GetStatus() => new()
    {
        Id = Record.Id,
        Kind = Record.Kind,
        Device = Record.Device,
        State = "Failed",
        IsPersistent = true,
        Scope = scope,
        ProcessId = Environment.ProcessId,
        Message = message,
    };

    public bool Serves(DeviceRequest request) => false;

    public Task DetachAsync(bool force, TimeSpan timeout, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task ReleaseAsync() => Task.CompletedTask;
}
