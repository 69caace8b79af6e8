using System.Globalization;
using Microsoft.Win32.SafeHandles;
using NbdPowerShell.Engine.Interop;
using NbdPowerShell.Engine.Kernel;

namespace NbdPowerShell.Engine.Fuse;

/// <summary>
/// A FUSE file system mounted with mount(2) on a connection from /dev/fuse: what fusermount3 does, without the
/// helper binary (we are root; the loop device needs that anyway). The file-system type "fuse.nbdpowershell" and
/// the source "nbdpowershell:ID" mark our mounts in /proc/self/mountinfo, so cleanup can tell them from others.
/// </summary>
internal static class FuseMount
{
    public const string Subtype = "nbdpowershell";
    public const string FileSystemType = "fuse." + Subtype;
    public const string SourcePrefix = Subtype + ":";
    private const string DevicePath = "/dev/fuse";

    /// <summary>
    /// Opens /dev/fuse (non-blocking: the readers poll so they can stop) and mounts it at <paramref name="mountPoint"/>.
    /// The kernel queues its INIT request at once; the caller starts serving the returned handle.
    /// </summary>
    public static SafeFileHandle Mount(string mountPoint, string id, bool readOnly, int maxRead, uint uid, uint gid)
    {
        var device = Libc.OpenHandle(DevicePath, Libc.O_RDWR | Libc.O_NONBLOCK, out int errno);
        if (device is null)
            throw errno switch
            {
                Libc.ENOENT or Libc.ENODEV or Libc.ENXIO => new NbdFuseUnavailableException(
                    $"{DevicePath} is missing ({Libc.StrError(errno)}): load the fuse module (modprobe fuse); in a container, pass the device (docker run --device /dev/fuse --cap-add SYS_ADMIN).", errno),
                Libc.EACCES or Libc.EPERM => new NbdPermissionDeniedException($"Cannot open {DevicePath} ({Libc.StrError(errno)}): attaching through FUSE must run as root.", errno),
                _ => new NbdFuseException($"Cannot open {DevicePath}: {Libc.StrError(errno)}.", errno),
            };
        // rootmode: the root inode is a directory (S_IFDIR in octal). default_permissions: the kernel checks modes,
        // so we never see ACCESS. No allow_other: only root (the mounting user) may use the file, which is all the
        // loop driver needs; the block device is what other users see. max_read: READ requests fit our buffers.
        string options = string.Create(CultureInfo.InvariantCulture,
            $"fd={device.DangerousGetHandle()},rootmode=40000,user_id={uid},group_id={gid},default_permissions,max_read={maxRead}");
        ulong flags = Libc.MS_NOSUID | Libc.MS_NODEV | Libc.MS_NOEXEC | (readOnly ? Libc.MS_RDONLY : 0);
        if (Libc.Mount(SourcePrefix + id, mountPoint, FileSystemType, flags, options) != 0)
        {
            errno = Libc.LastErrno;
            device.Dispose();
            throw errno switch
            {
                Libc.EPERM or Libc.EACCES => new NbdPermissionDeniedException($"Mounting a FUSE file system at {mountPoint} was refused ({Libc.StrError(errno)}): run as root (CAP_SYS_ADMIN).", errno),
                Libc.ENODEV => new NbdFuseUnavailableException($"The kernel has no fuse file system ({Libc.StrError(errno)}): load it with modprobe fuse.", errno),
                _ => new NbdFuseException($"Mounting the FUSE file system at {mountPoint} failed: {Libc.StrError(errno)}.", errno),
            };
        }
        return device;
    }

    /// <summary>
    /// Unmounts <paramref name="mountPoint"/>. Returns false (and leaves it mounted) when it is busy and
    /// <paramref name="lazy"/> is not set; lazy detaches it from the tree now and frees it when the last user lets go.
    /// A mount point that is no longer mounted counts as done.
    /// </summary>
    public static bool Unmount(string mountPoint, bool lazy)
    {
        if (Libc.Umount2(mountPoint, Libc.UMOUNT_NOFOLLOW | (lazy ? Libc.MNT_DETACH : 0)) == 0) return true;
        int errno = Libc.LastErrno;
        return errno switch
        {
            Libc.EINVAL or Libc.ENOENT => true, // not a mount point (any more)
            Libc.EBUSY => false,
            _ => throw new NbdFuseException($"Unmounting {mountPoint} failed: {Libc.StrError(errno)}.", errno),
        };
    }

    /// <summary>Our FUSE mounts in <paramref name="mountInfo"/>: (mount point, attachment id) for type fuse.nbdpowershell.</summary>
    public static IReadOnlyList<(string MountPoint, string Id)> List(string mountInfo = "/proc/self/mountinfo")
    {
        var result = new List<(string, string)>();
        if (!File.Exists(mountInfo)) return result;
        foreach (var line in File.ReadLines(mountInfo))
        {
            var fields = line.Split(' ');
            int dash = Array.IndexOf(fields, "-", 6);
            if (fields.Length < 5 || dash < 0 || dash + 2 >= fields.Length || fields[dash + 1] != FileSystemType) continue;
            string source = MountTable.Unescape(fields[dash + 2]);
            if (!source.StartsWith(SourcePrefix, StringComparison.Ordinal)) continue;
            result.Add((MountTable.Unescape(fields[4]), source[SourcePrefix.Length..]));
        }
        return result;
    }
}
