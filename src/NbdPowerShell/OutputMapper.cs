using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Fuse;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Hosting.Devices;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Kernel.Supervision;
using NbdPowerShell.Engine.Protocol;
using NbdPowerShell.Engine.Service;
using NbdPowerShell.Engine.Service.Messages;

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

    /// <summary>
    /// A session from what the kernel shows (<paramref name="info"/>, null when the kernel has no such device) and
    /// what its owner reports (<paramref name="owner"/>, null when no NbdPowerShell process owns it).
    /// </summary>
    public static NbdSession ToSession(NbdDeviceInfo? info, DeviceStatus? owner, NbdHost? thisProcess = null)
    {
        if (info is null && owner is null)
            throw new ArgumentException("A session needs the kernel's view or its owner's.");
        NbdUri? uri = info?.Uri;
        if (uri is null && (info?.BackendIdentifier ?? owner?.Uri) is { } text)
            NbdUri.TryParse(text, out uri);
        bool here = owner is not null && owner.ProcessId == Environment.ProcessId;
        bool fuse = owner?.Kind == FuseDeviceKind.KindName;
        bool relayed = owner?.Transport == "TLS relay" && owner.State != "Broken";
        int index = info?.Index ?? owner?.Index ?? -1;
        return new NbdSession
        {
            Device = info?.Device ?? owner!.Device ?? $"/dev/nbd{index}",
            Index = index,
            ComputerName = uri is { IsUnix: false } ? uri.Host : null,
            Port = uri is { IsUnix: false } ? uri.Port : null,
            ExportName = uri?.ExportName,
            SocketPath = uri?.SocketPath,
            Uri = uri?.ToString(),
            Size = info?.Size ?? owner?.Size ?? 0,
            BlockSize = info?.BlockSize ?? owner?.BlockSize ?? 0,
            IsReadOnly = info?.IsReadOnly ?? owner?.IsReadOnly ?? false,
            // A FUSE device has no nbd entry in the kernel: it is connected while its owner serves it.
            IsConnected = info?.IsConnected ?? (fuse && owner!.State == "Connected"),
            State = owner?.State ?? (info?.IsConnected == true ? "Connected" : "Disconnected"),
            StatusMessage = owner?.Message,
            Connections = info?.Connections,
            Timeout = info?.TimeoutSeconds,
            MountPoints = info?.MountPoints.ToArray() ?? owner?.MountPoints?.ToArray() ?? [],
            Driver = fuse ? "Fuse" : "Nbd",
            BackingFile = owner?.BackingFile,
            BackendIdentifier = info?.BackendIdentifier,
            Scope = owner?.Scope.ToString(),
            OwnerProcessId = owner?.ProcessId,
            IsPersistent = owner?.IsPersistent ?? false,
            IsServedByThisProcess = thisProcess?.ExportServing(info?.BackendIdentifier ?? owner?.Uri) is not null,
            IsTls = uri?.Tls == true,
            IsTlsRelayed = relayed,
            Transport = TransportOf(owner, here, uri?.Tls == true),
            ActiveUri = owner?.ActiveUri ?? uri?.ToString(),
            Mode = info?.Mode?.ToString(),
            Counters = owner?.Counters ?? new Dictionary<string, long>(),
            History = owner?.History.Select(e => new NbdSessionEvent(e.Time, e.Event, e.Message)).ToArray() ?? [],
            // Only supervised devices: a FUSE device counts its own NBD reconnects under the same name, shown in Counters.
            ReconnectCount = owner?.Kind == SupervisedDeviceKind.KindName && owner.Counters.TryGetValue("Reconnects", out long reconnects) ? (int)reconnects : null,
            LastLossTime = owner?.LastLossTime,
            LastLossReason = owner?.LastLossReason,
        };
    }

    /// <summary>How the kernel's sockets reach the server, and which process is in between.</summary>
    private static string TransportOf(DeviceStatus? owner, bool here, bool tls)
    {
        string where = owner is null ? "" : here ? " (this process)" : owner.Scope == HostScope.Service ? $" (NbdPowerShell service, pid {owner.ProcessId})" : $" (pid {owner.ProcessId})";
        return owner?.Transport switch
        {
            "TLS relay" or "Local socket pair" => owner.Transport + where,
            "FUSE" => "FUSE and loop device" + where,
            _ when tls => "TLS relay (another process)",
            _ => "Plain",
        };
    }

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

    public static NbdService ToService(ServicePaths paths, ServiceStatus? status, string unitPath) => new()
    {
        IsRunning = status is not null,
        ProcessId = status?.ProcessId,
        Version = status?.Version,
        StartTime = status?.StartTime,
        Uptime = status is null ? null : DateTimeOffset.Now - status.StartTime,
        ControlSocket = status?.ControlSocket ?? paths.ControlSocket,
        ConfigurationPath = status?.ConfigurationPath ?? paths.ConfigurationFile,
        RuntimeDirectory = status?.RuntimeDirectory ?? paths.RuntimeDirectory,
        LogPath = status?.LogPath ?? paths.LogFile,
        ExportCount = status?.ExportCount ?? 0,
        DeviceCount = status?.DeviceCount ?? 0,
        ShutdownGraceSeconds = status?.ShutdownGraceSeconds,
        IsSystemdManaged = status?.IsSystemdManaged ?? false,
        IsInstalled = File.Exists(unitPath),
        UnitPath = unitPath,
        IsSystemdRunning = SystemdUnit.IsSystemdRunning,
        Problems = status?.Problems.ToArray() ?? [],
        CleanedUp = status?.CleanedUp.ToArray() ?? [],
    };
}
