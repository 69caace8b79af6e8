using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;

namespace NbdPowerShell.Engine.Service.Messages;

/// <summary>The device family: attach, list, detach the devices the service owns.</summary>
public static class DeviceMessages
{
    public const string Attach = "devices.attach";
    public const string List = "devices.list";
    public const string Detach = "devices.detach";

    internal static void Register(ControlDispatcher dispatcher, ServiceHost service)
    {
        dispatcher.Add<DeviceRequest, HostResult<DeviceStatus>>(Attach, changes: true, (r, ct) => service.AttachDeviceAsync(r, ct));
        dispatcher.Add<NoBody, IReadOnlyList<DeviceStatus>>(List, changes: false, (_, ct) => service.GetDevicesAsync(ct));
        dispatcher.Add<DetachDeviceRequest, DeviceStatus>(Detach, changes: true,
            (r, ct) => service.DetachDeviceAsync(r.Device, r.Force, TimeSpan.FromSeconds(Math.Clamp(r.TimeoutSeconds, 1, 3600)), ct));
    }
}

public sealed record DetachDeviceRequest(string Device, bool Force, int TimeoutSeconds);
