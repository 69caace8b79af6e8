using System.Text.RegularExpressions;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell;

/// <summary>Maps kernel discovery records to the public output types and parses device arguments.</summary>
internal static partial class SessionMapper
{
    [GeneratedRegex(@"^(?:/dev/)?nbd(\d+)$")]
    private static partial Regex DeviceArgument();

    /// <summary>Accepts /dev/nbd3, nbd3 or 3; null when it is none of those.</summary>
    public static int? ParseDevice(string text)
    {
        text = text.Trim();
        if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int bare))
            return bare;
        var m = DeviceArgument().Match(text);
        return m.Success && int.TryParse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture, out int index) ? index : null;
    }

    public static NbdSession ToSession(NbdDeviceInfo info, ExportHost? host = null)
    {
        NbdUri? uri = info.Uri;
        if (uri is null && info.BackendIdentifier is { } backend)
            NbdUri.TryParse(backend, out uri);
        return new NbdSession
        {
            Device = info.Device,
            Index = info.Index,
            ComputerName = uri is { IsUnix: false } ? uri.Host : null,
            Port = uri is { IsUnix: false } ? uri.Port : null,
            ExportName = uri?.ExportName,
            SocketPath = uri?.SocketPath,
            Uri = uri?.ToString(),
            Size = info.Size,
            BlockSize = info.BlockSize,
            IsReadOnly = info.IsReadOnly,
            IsConnected = info.IsConnected,
            Connections = info.Connections,
            Timeout = info.TimeoutSeconds,
            MountPoints = info.MountPoints.ToArray(),
            BackendIdentifier = info.BackendIdentifier,
            IsServedByThisProcess = host?.ExportServing(info.Index, info.BackendIdentifier) is not null,
            IsTls = uri?.Tls == true || TlsRelayRegistry.IsRelayed(info.Index),
            IsTlsRelayed = TlsRelayRegistry.IsRelayed(info.Index),
            Transport = TransportOf(info.Index, uri?.Tls == true),
            Mode = info.Mode?.ToString(),
        };
    }

    /// <summary>How the kernel's sockets reach the server: directly, or through a TLS relay here or elsewhere (e.g. nbd-client's proxy).</summary>
    public static string TransportOf(int index, bool tls) =>
        TlsRelayRegistry.IsRelayed(index) ? RelayedHere : tls ? "TLS relay (another process)" : "Plain";

    public const string RelayedHere = "TLS relay (this process)";

    public static NbdDevice ToDevice(NbdDeviceInfo info) => new()
    {
        Device = info.Device,
        Index = info.Index,
        State = info.IsConnected ? "Connected" : "Free",
        IsConnected = info.IsConnected,
        Size = info.Size,
        BackendIdentifier = info.BackendIdentifier,
        MountPoints = info.MountPoints.ToArray(),
    };

    /// <summary>A session as Connect-NbdDevice knows it right after attaching (used when discovery cannot see it yet).</summary>
    public static NbdSession FromAttach(AttachResult result, NbdUri uri, TimeSpan? timeout, bool servedHere) => new()
    {
        Device = result.Device,
        Index = result.Index,
        ComputerName = uri.IsUnix ? null : uri.Host,
        Port = uri.IsUnix ? null : uri.Port,
        ExportName = uri.ExportName,
        SocketPath = uri.SocketPath,
        Uri = uri.ToString(),
        Size = result.Size,
        BlockSize = result.BlockSize,
        IsReadOnly = result.IsReadOnly,
        IsConnected = true,
        Connections = result.Connections,
        Timeout = timeout is { } t ? (int)Math.Ceiling(t.TotalSeconds) : null,
        BackendIdentifier = result.BackendIdentifier,
        IsServedByThisProcess = servedHere,
        IsTls = uri.Tls || result.IsTlsRelayed,
        IsTlsRelayed = result.IsTlsRelayed,
        Transport = result.IsTlsRelayed ? RelayedHere : "Plain",
        Mode = result.Mode.ToString(),
    };
}
