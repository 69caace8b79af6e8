using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Protocol;

namespace NbdPowerShell;

/// <summary>The one place where engine records become the public output types.</summary>
internal static class OutputMapper
{
    public static NbdExport ToExport(ExportInfo e, bool changed = false) => new()
    {
        Name = e.Name,
        Description = e.Description,
        Path = e.Path,
        Backend = e.Backend,
        Size = e.Size,
        IsReadOnly = e.IsReadOnly,
        IsCopyOnWrite = e.IsCopyOnWrite,
        ListenAddress = e.ListenAddress.ToArray(),
        Port = e.Port,
        SocketPath = e.SocketPath,
        Listeners = e.Listeners.ToArray(),
        AllowedClient = e.AllowedClient.ToArray(),
        MaxConnections = e.MaxConnections,
        State = e.State,
        StatusMessage = e.StatusMessage,
        ClientCount = e.ClientCount,
        TotalConnections = e.TotalConnections,
        StartTime = e.StartTime,
        BytesRead = e.BytesRead,
        BytesWritten = e.BytesWritten,
        Uri = e.Uri,
        TlsMode = e.TlsMode,
        IsTlsOnly = e.IsTlsOnly,
        CertificateSubject = e.CertificateSubject,
        CertificateThumbprint = e.CertificateThumbprint,
        RequiresClientCertificate = e.RequiresClientCertificate,
        Scope = e.Scope.ToString(),
        IsPersistent = e.IsPersistent,
        ProcessId = e.ProcessId,
        Changed = changed,
    };

    public static NbdRemoteExport ToRemote(NbdUri server, NbdExportInfo e)
    {
        var flags = e.Flags ?? TransmissionFlags.None;
        return new NbdRemoteExport
        {
            ComputerName = server.IsUnix ? null : server.Host,
            Port = server.IsUnix ? 0 : server.Port,
            SocketPath = server.SocketPath,
            Name = e.Name,
            Description = e.Description,
            Size = e.Size,
            IsReadOnly = e.IsReadOnly,
            CanMultiConnection = e.CanMultiConn,
            CanFlush = flags.HasFlag(TransmissionFlags.SendFlush),
            CanTrim = flags.HasFlag(TransmissionFlags.SendTrim),
            CanWriteZeroes = flags.HasFlag(TransmissionFlags.SendWriteZeroes),
            CanFastZero = flags.HasFlag(TransmissionFlags.SendFastZero),
            CanCache = flags.HasFlag(TransmissionFlags.SendCache),
            IsRotational = flags.HasFlag(TransmissionFlags.Rotational),
            Flags = e.Flags?.ToString() ?? "",
            MinimumBlockSize = e.MinimumBlockSize,
            PreferredBlockSize = e.PreferredBlockSize,
            MaximumBlockSize = e.MaximumBlockSize,
            IsTls = server.Tls,
            Uri = server.WithExportName(e.Name).ToString(),
        };
    }

    public static NbdSession ToSession(NbdDeviceInfo info, NbdHost? host = null)
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
