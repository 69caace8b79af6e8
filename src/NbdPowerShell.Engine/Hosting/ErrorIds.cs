using System.Net.Sockets;
using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Copy;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell.Engine.Hosting;

/// <summary>
/// The fixed catalogue of error ids (the first part of a cmdlet's FullyQualifiedErrorId) and which engine
/// exception maps to which. The service sends these ids in its error replies, so a failure reads the same whether
/// it happened in the pwsh process or in the service. Categories and recommended actions live in the module.
/// </summary>
public static class ErrorIds
{
    public const string ExportNotFound = "NbdExportNotFound";
    public const string ExportAlreadyExists = "NbdExportAlreadyExists";
    public const string ExportBusy = "NbdExportBusy";
    public const string AddressInUse = "NbdAddressInUse";
    public const string DeviceNotFound = "NbdDeviceNotFound";
    public const string DeviceBusy = "NbdDeviceBusy";
    public const string DeviceMounted = "NbdDeviceMounted";
    public const string PermissionDenied = "NbdPermissionDenied";
    public const string KernelModuleMissing = "NbdKernelModuleMissing";
    /// <summary>-Driver Fuse (or Auto without the nbd driver) and no /dev/fuse.</summary>
    public const string FuseUnavailable = "NbdFuseUnavailable";
    /// <summary>-Driver Fuse and no loop driver or no free loop device.</summary>
    public const string LoopUnavailable = "NbdLoopUnavailable";
    /// <summary>Mounting, serving or unmounting the FUSE file, or binding its loop device, failed.</summary>
    public const string FuseError = "NbdFuseError";
    public const string PlatformNotSupported = "NbdPlatformNotSupported";
    public const string HandshakeFailed = "NbdHandshakeFailed";
    public const string ExportNameUnknown = "NbdExportNameUnknown";
    public const string ConnectionFailed = "NbdConnectionFailed";
    public const string Timeout = "NbdTimeout";
    public const string TlsRequired = "NbdTlsRequired";
    public const string TlsNotSupported = "NbdTlsNotSupported";
    public const string TlsHandshakeFailed = "NbdTlsHandshakeFailed";
    public const string CertificateInvalid = "NbdCertificateInvalid";
    public const string MultiConnNotSupported = "NbdMultiConnNotSupported";
    public const string PathNotFound = "NbdPathNotFound";
    public const string StorageError = "NbdStorageError";
    public const string KernelError = "NbdKernelError";
    public const string InvalidArgument = "NbdInvalidArgument";
    /// <summary>A -Uri that is not an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://).</summary>
    public const string UriInvalid = "NbdUriInvalid";
    public const string ServerStopped = "NbdServerStopped";
    public const string ServiceUnavailable = "NbdServiceUnavailable";
    public const string IOError = "NbdIOError";
    public const string UnexpectedError = "NbdUnexpectedError";
    public const string DestinationExists = "NbdDestinationExists";
    public const string DestinationReadOnly = "NbdDestinationReadOnly";
    public const string DestinationTooSmall = "NbdDestinationTooSmall";
    public const string DiskReadFailed = "NbdDiskReadFailed";
    public const string DiskWriteFailed = "NbdDiskWriteFailed";

    public static IReadOnlyList<string> All { get; } =
    [
        ExportNotFound, ExportAlreadyExists, ExportBusy, AddressInUse, DeviceNotFound, DeviceBusy, DeviceMounted,
        PermissionDenied, KernelModuleMissing, FuseUnavailable, LoopUnavailable, FuseError, PlatformNotSupported, HandshakeFailed, ExportNameUnknown,
        ConnectionFailed, Timeout, TlsRequired, TlsNotSupported, TlsHandshakeFailed, CertificateInvalid, MultiConnNotSupported,
        PathNotFound, StorageError, KernelError, InvalidArgument, UriInvalid, ServerStopped, ServiceUnavailable, IOError, UnexpectedError,
        DestinationExists, DestinationReadOnly, DestinationTooSmall, DiskReadFailed, DiskWriteFailed,
    ];

    /// <summary>The catalogue id for an engine (or argument) exception; null when it is not an expected failure (a bug).</summary>
    public static string? Classify(Exception exception) => exception switch
    {
        NbdHostException h => h.ErrorId,
        Service.NbdServiceNotRunningException => ServiceUnavailable,
        DiskDestinationException d => d.Problem switch
        {
            DestinationProblem.Exists => DestinationExists,
            DestinationProblem.ReadOnly => DestinationReadOnly,
            DestinationProblem.TooSmall => DestinationTooSmall,
            _ => InvalidArgument,
        },
        DiskIOException io => io.Side == DiskSide.Source ? DiskReadFailed : DiskWriteFailed,
        NbdServerException s => s.Reason switch
        {
            NbdServerError.ExportAlreadyExists => ExportAlreadyExists,
            NbdServerError.ExportNotFound => ExportNotFound,
            NbdServerError.ExportBusy => ExportBusy,
            NbdServerError.AddressInUse => AddressInUse,
            NbdServerError.PermissionDenied => PermissionDenied,
            NbdServerError.InvalidAddress => InvalidArgument,
            NbdServerError.Stopped => ServerStopped,
            _ => UnexpectedError,
        },
        NbdExportNotFoundException => ExportNameUnknown,
        NbdTlsRequiredException => TlsRequired,
        NbdTlsNotSupportedException => TlsNotSupported,
        NbdCertificateValidationException => CertificateInvalid,
        NbdTlsHandshakeException => TlsHandshakeFailed,
        NbdOptionErrorException or NbdProtocolException => HandshakeFailed,
        NbdTimeoutException or TimeoutException => Timeout,
        NbdConnectionRefusedException or NbdConnectionException => ConnectionFailed,
        NbdClientException => HandshakeFailed,
        NbdKernelException k => All.Contains(k.ErrorId) ? k.ErrorId : KernelError,
        StorageException { Errno: 1 or 13 } => PermissionDenied,
        StorageException { Errno: 2 } => PathNotFound,
        StorageException => StorageError,
        UnauthorizedAccessException => PermissionDenied,
        FileNotFoundException or DirectoryNotFoundException => PathNotFound,
        ArgumentException or FormatException => InvalidArgument,
        SocketException => ConnectionFailed,
        IOException => IOError,
        _ => null,
    };
}

/// <summary>A failure that already carries its catalogue id: found by the module, or reported by the service.</summary>
public sealed class NbdHostException : Exception
{
    public NbdHostException(string errorId, string message, Exception? inner = null) : base(message, inner) => ErrorId = errorId;

    public string ErrorId { get; }
}
