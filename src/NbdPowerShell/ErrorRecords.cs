using System.Management.Automation;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell;

/// <summary>Turns exceptions into ErrorRecords with the catalogue id, its category and what the admin can do.</summary>
internal static class ErrorRecords
{
    public static ErrorCategory CategoryOf(string errorId) => errorId switch
    {
        ErrorIds.ExportNotFound or ErrorIds.DeviceNotFound or ErrorIds.ExportNameUnknown or ErrorIds.PathNotFound => ErrorCategory.ObjectNotFound,
        ErrorIds.ExportAlreadyExists => ErrorCategory.ResourceExists,
        ErrorIds.AddressInUse or ErrorIds.ServerStopped or ErrorIds.ServiceUnavailable => ErrorCategory.ResourceUnavailable,
        ErrorIds.DeviceBusy or ErrorIds.DeviceMounted or ErrorIds.ExportBusy => ErrorCategory.ResourceBusy,
        ErrorIds.PermissionDenied => ErrorCategory.PermissionDenied,
        ErrorIds.KernelModuleMissing or ErrorIds.FuseUnavailable or ErrorIds.LoopUnavailable => ErrorCategory.NotInstalled,
        ErrorIds.PlatformNotSupported => ErrorCategory.NotImplemented,
        ErrorIds.HandshakeFailed => ErrorCategory.ProtocolError,
        ErrorIds.ConnectionFailed => ErrorCategory.ConnectionError,
        ErrorIds.Timeout => ErrorCategory.OperationTimeout,
        ErrorIds.TlsRequired or ErrorIds.TlsNotSupported or ErrorIds.TlsHandshakeFailed or ErrorIds.CertificateInvalid => ErrorCategory.SecurityError,
        ErrorIds.MultiConnNotSupported or ErrorIds.InvalidArgument or ErrorIds.UriInvalid => ErrorCategory.InvalidArgument,
        ErrorIds.StorageError => ErrorCategory.OpenError,
        ErrorIds.KernelError or ErrorIds.IOError or ErrorIds.FuseError => ErrorCategory.DeviceError,
        ErrorIds.DestinationExists => ErrorCategory.ResourceExists,
        ErrorIds.DestinationReadOnly => ErrorCategory.PermissionDenied,
        ErrorIds.DestinationTooSmall => ErrorCategory.InvalidArgument,
        ErrorIds.DiskReadFailed => ErrorCategory.ReadError,
        ErrorIds.DiskWriteFailed => ErrorCategory.WriteError,
        _ => ErrorCategory.NotSpecified,
    };

    public static string? RecommendedActionOf(string errorId) => errorId switch
    {
        ErrorIds.ExportNotFound => "Run Get-NbdExport to see the exports of this PowerShell process and of the NbdPowerShell service.",
        ErrorIds.ExportAlreadyExists => "Choose another -Name, or stop the existing export with Stop-NbdExport.",
        ErrorIds.ExportBusy => "Disconnect the clients first (Disconnect-NbdDevice on their machines) or use -Force to drop them.",
        ErrorIds.AddressInUse => "Another program listens there: pick another -Port (0 chooses a free one) or stop that program.",
        ErrorIds.DeviceNotFound => "Run Get-NbdDevice to list the nbd devices; load more with: modprobe nbd nbds_max=32.",
        ErrorIds.DeviceBusy => "Pick another -Device or omit it to let the kernel choose a free one; Get-NbdSession shows what is attached.",
        ErrorIds.DeviceMounted => "Unmount the device (umount) first, or use -Force to disconnect anyway (pending writes fail).",
        ErrorIds.PermissionDenied => "Run PowerShell as root (sudo pwsh): attaching devices and the NbdPowerShell service need root; otherwise check the file permissions.",
        ErrorIds.KernelModuleMissing => "Load the kernel module as root: modprobe nbd (in a container: on the host, with --privileged).",
        ErrorIds.FuseUnavailable => "Load the fuse module as root (modprobe fuse); in a container, pass the device and the capability: --device /dev/fuse --cap-add SYS_ADMIN. Or use -Driver Nbd where the nbd module exists.",
        ErrorIds.LoopUnavailable => "Load the loop module as root (modprobe loop), free a loop device (losetup -a lists them) or, in a container, run it with --privileged. Or use -Driver Nbd where the nbd module exists.",
        ErrorIds.FuseError => "Check the NbdPowerShell service's log (Get-NbdService shows LogPath) for the FUSE or loop step that failed; Get-NbdSession shows what is attached.",
        ErrorIds.PlatformNotSupported => "Attaching and listing NBD devices needs Linux; serving exports works everywhere.",
        ErrorIds.HandshakeFailed => "Check that the address is an NBD server speaking fixed-newstyle negotiation and that it allows this client.",
        ErrorIds.ExportNameUnknown => "Run Find-NbdExport to list the server's exports and pass one of them as -ExportName.",
        ErrorIds.ConnectionFailed => "Check -ComputerName and -Port (default 10809), the server and the firewall.",
        ErrorIds.Timeout => "The server did not answer in time: check it is reachable, or raise -Timeout.",
        ErrorIds.TlsRequired => "The server only accepts TLS: add -UseTls (and -CertificateAuthority <ca.pem> unless the system store trusts its certificate).",
        ErrorIds.TlsNotSupported => "The server does not offer TLS: connect without -UseTls and the other TLS parameters, or enable TLS on the server.",
        ErrorIds.TlsHandshakeFailed => "Check that the server accepts TLS 1.2 or later and, for mutual TLS, give a client certificate it trusts with -ClientCertificate or -ClientCertificatePath.",
        ErrorIds.CertificateInvalid => "Trust the server's authority with -CertificateAuthority <ca.pem>, connect by a name its certificate carries, or opt out with -SkipCertificateCheck.",
        ErrorIds.MultiConnNotSupported => "Use -Connections 1: the export does not allow several connections.",
        ErrorIds.UriInvalid => "Write the server as nbd://host[:port]/export, nbds://host[:port]/export (TLS) or nbd+unix:///export?socket=/path/to.sock, as nbdinfo and qemu accept them.",
        ErrorIds.PathNotFound => "Check the -Path: it must name an existing file or block device.",
        ErrorIds.StorageError => "Check the file or block device named in the message: it must be readable (and writable unless the export is read-only), and not locked or held exclusively by another program.",
        ErrorIds.KernelError => "The kernel's nbd driver refused the request: its message is in dmesg, and Get-NbdSession shows the device's state.",
        ErrorIds.InvalidArgument => "Correct the value named in the message; Get-Help <cmdlet> -Parameter <name> describes what it accepts.",
        ErrorIds.DestinationExists => "Add -Force to overwrite the destination, or choose another -Destination (a new file is created).",
        ErrorIds.DestinationReadOnly => "Copy to a writable export, file or device; a read-only export (nbdkit -r, Start-NbdExport -ReadOnly) cannot be a destination.",
        ErrorIds.DestinationTooSmall => "Choose a destination at least as large as the source, or a new file (it is created with the source's size).",
        ErrorIds.DiskReadFailed => "Check the source server and network; the message says how far the copy got. Run the copy again with -Force to redo it.",
        ErrorIds.DiskWriteFailed => "Check the destination (space, permissions, server); the message says how far the copy got. Run the copy again with -Force to redo it.",
        ErrorIds.ServerStopped => "The server stopped (the module was removed or the service is shutting down); start the export again.",
        ErrorIds.ServiceUnavailable => "Check the NbdPowerShell service with Get-NbdService and its log (LogPath); Start-NbdService starts it.",
        ErrorIds.IOError => "An input/output operation failed; check the device, file or connection named in the message.",
        ErrorIds.UnexpectedError => "This is a bug in NbdPowerShell; please report it with the message and the steps that led to it.",
        _ => null,
    };

    public static ErrorRecord From(Exception exception, object? target)
    {
        if (exception is AggregateException { InnerExceptions.Count: 1 } aggregate)
            exception = aggregate.InnerExceptions[0];
        string id = ErrorIds.Classify(exception) ?? ErrorIds.UnexpectedError;
        return Create(exception, id, target);
    }

    public static ErrorRecord Create(Exception exception, string errorId, object? target)
    {
        var record = new ErrorRecord(exception, errorId, CategoryOf(errorId), target);
        if (RecommendedActionOf(errorId) is { } action)
            record.ErrorDetails = new ErrorDetails(exception.Message) { RecommendedAction = action };
        return record;
    }

    public static ErrorRecord Create(string errorId, string message, object? target) =>
        Create(new NbdHostException(errorId, message), errorId, target);
}
