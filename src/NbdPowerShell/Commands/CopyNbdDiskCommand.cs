using System.Management.Automation;
using NbdPowerShell.Engine.Copy;
using NbdPowerShell.Engine.Hosting;

namespace NbdPowerShell.Commands;

/// <summary>
/// Copies a whole disk (NBD export, file or block device) to another, sparse-aware and over several pipelined
/// connections, like nbdcopy; emits what it did.
/// </summary>
[Cmdlet(VerbsCommon.Copy, "NbdDisk", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdCopyResult))]
public sealed class CopyNbdDiskCommand : NbdDiskCmdlet
{
    /// <summary>NBD URI, path, or an NbdExport/NbdRemoteExport/NbdSession (by pipeline).</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public PSObject? Source { get; set; }

    /// <summary>NBD URI, path (created when missing; a directory gets a file named after the source), or an export or session object.</summary>
    [Parameter(Mandatory = true, Position = 1)]
    [ValidateNotNull]
    public PSObject? Destination { get; set; }

    /// <summary>Overwrite a destination that has content.</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    /// <summary>Blocks of this many bytes that hold only zeroes are not written (0: write all data as read).</summary>
    [Parameter]
    [ValidateRange(0, 1048576)]
    public int SparseBlockSize { get; set; } = DiskCopyOptions.Default.SparseBlockSize;

    /// <summary>Flush the destination to stable storage before returning.</summary>
    [Parameter]
    public SwitchParameter Flush { get; set; }

    /// <summary>Hash source and destination after copying and report whether they match.</summary>
    [Parameter]
    public SwitchParameter Verify { get; set; }

    /// <summary>The hash algorithm of -Verify.</summary>
    [Parameter]
    [ValidateSet("SHA256", "SHA1", "SHA384", "SHA512", "MD5")]
    public string Algorithm { get; set; } = "SHA256";

    protected override void ProcessRecord()
    {
        if (SparseBlockSize != 0 && (SparseBlockSize < 512 || (SparseBlockSize & (SparseBlockSize - 1)) != 0))
        {
            WriteNbdError(ErrorIds.InvalidArgument, $"-SparseBlockSize {SparseBlockSize} must be 0 (off) or a power of two from 512 to 1048576.", SparseBlockSize);
            return;
        }
        TryRun(() =>
        {
            var source = ResolveLocation(Source!, nameof(Source));
            var destination = IntoDirectory(ResolveLocation(Destination!, nameof(Destination)), source);
            var options = BaseOptions() with
            {
                SparseBlockSize = SparseBlockSize,
                // Under -WhatIf the overwrite is what ShouldProcess describes, so don't refuse it first.
                Overwrite = Force || WhatIfRequested,
                Flush = Flush,
                Verify = Verify,
                HashAlgorithm = DiskHasher.ParseAlgorithm(Algorithm),
            };
            var copy = Wait(DiskCopy.PrepareAsync(source, destination, options, CancelToken), "Copy-NbdDisk", $"Opening {source} and {destination}");
            try
            {
                if (!ShouldProcess(copy.DescribeDestination(), $"Copy {DiskCopy.Bytes(copy.Source.Size)} from {copy.Source.Name}"))
                    return;
                var progress = new DiskProgress();
                DiskCopyResult result;
                try
                {
                    result = RunWithProgress(copy.RunAsync(progress, CancelToken), progress, "Copy-NbdDisk", $"{copy.Source.Name} to {destination}");
                }
                catch (DiskOperationCanceledException e) when (CancelToken.IsCancellationRequested)
                {
                    throw Stopped(e.Message);
                }
                var output = DiskResultMapper.ToCopyResult(result);
                if (output.IsVerified == false)
                    WriteWarning($"The {output.HashAlgorithm} of {output.Destination} ({output.DestinationHash}) differs from the source's ({output.SourceHash}): the copy does not match.");
                WriteObject(output);
            }
            finally
            {
                copy.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }, Source);
    }

    private bool WhatIfRequested => MyInvocation.BoundParameters.TryGetValue("WhatIf", out var w)
        ? ((SwitchParameter)w).IsPresent
        : LanguagePrimitives.IsTrue(GetVariableValue("WhatIfPreference"));

    /// <summary>A directory destination gets a file named after the source: the export name plus .img, or the source file's name.</summary>
    private static DiskLocation IntoDirectory(DiskLocation destination, DiskLocation source)
    {
        if (destination.Path is not { } dir || !Directory.Exists(dir))
            return destination;
        string name = source.Uri is { } uri
            ? (string.IsNullOrEmpty(uri.ExportName) ? "disk" : uri.ExportName.Replace('/', '_')) + ".img"
            : Path.GetFileName(source.Path!);
        return DiskLocation.ForPath(Path.Combine(dir, name));
    }
}
