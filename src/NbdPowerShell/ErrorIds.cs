using NbdPowerShell.Engine.Client;
using NbdPowerShell.Engine.Copy;
using NbdPowerShell.Engine.Kernel;
using NbdPowerShell.Engine.Server;
using NbdPowerShell.Engine.Storage;

namespace NbdPowerShell;

/// <summary>
/// The fixed catalogue of error ids (the first part of FullyQualifiedErrorId) and which engine exception
/// maps to which. Categories and recommended actions live in <see cref="ErrorRecords"/>; this class has no
/// PowerShell dependency so it can be unit tested on plain .NET.
/// </summary>
internal static class ErrorIds
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
    public const string DestinationExists = "NbdDestinationExists";
    public const string DestinationReadOnly = "NbdDestinationReadOnly";
    public const string DestinationTooSmall = "NbdDestinationTooSmall";
    public const string DiskReadFailed = "NbdDiskReadFailed";
    public const string DiskWriteFailed = "NbdDiskWriteFailed";

    public static IReadOnlyList<string> All { get; } =
    [
        ExportNotFound, ExportAlreadyExists, ExportBusy, AddressInUse, DeviceNotFound, DeviceBusy, DeviceMounted,
        PermissionDenied, KernelModuleMissing, PlatformNotSupported, HandshakeFailed, ExportNameUnknown,
        ConnectionFailed, Timeout, TlsRequired, TlsNotSupported, TlsHandshakeFailed, CertificateInvalid, MultiConnNotSupported, PathNotFound, StorageError, KernelError,
        InvalidArgument,
        DestinationExists, DestinationReadOnly, DestinationTooSmall, DiskReadFailed, DiskWriteFailed,
    ];

    /// <summary>The catalogue id for an engine (or argument) exception; null when it is not an expected failure.</summary>
    public static string? Classify(Exception exception) => exception switch
    {
        NbdModuleException m => m.ErrorId,
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
            _ => ExportNotFound,
        },
        NbdExportNotFoundException => ExportNameUnknown,
        NbdTlsRequiredException => TlsRequired,
        NbdTlsNotSupportedException => TlsNotSupported,
        NbdCertificateValidationException => CertificateInvalid,
        NbdTlsHandshakeException => TlsHandshakeFailed,
        NbdOptionErrorException or NbdProtocolException => HandshakeFailed,
        NbdTimeoutException => Timeout,
        NbdConnectionRefusedException or NbdConnectionException => ConnectionFailed,
        NbdClientException => HandshakeFailed,
        NbdKernelException k => All.Contains(k.ErrorId) ? k.ErrorId : KernelError,
        StorageException { Errno: 1 or 13 } => PermissionDenied,
        StorageException { Errno: 2 } => PathNotFound,
        StorageException => StorageError,
        UnauthorizedAccessException => PermissionDenied,
        FileNotFoundException or DirectoryNotFoundException => PathNotFound,
        ArgumentException or FormatException => InvalidArgument,
        _ => null,
    };
}

/// <summary>A failure found by the module itself (not the engine), carrying its catalogue id.</summary>
internal sealed class NbdModuleException : Exception
{
    public NbdModuleException(string errorId, string message, Exception? inner = null) : base(message, inner) => ErrorId = errorId;

    public string ErrorId { get; }
}
