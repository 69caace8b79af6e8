using System.Management.Automation;
using NbdPowerShell.Engine.Copy;

namespace NbdPowerShell.Commands;

/// <summary>
/// The content hash of a whole disk (NBD export, file or block device), equal to sha256sum (or the chosen
/// algorithm's tool) of the raw image; reads run in parallel, holes are hashed as zeroes without being read.
/// </summary>
[Cmdlet(VerbsCommon.Get, "NbdDiskHash")]
[OutputType(typeof(NbdDiskHash))]
public sealed class GetNbdDiskHashCommand : NbdDiskCmdlet
{
    /// <summary>NBD URI, path, or an NbdExport/NbdRemoteExport/NbdSession (by pipeline).</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public PSObject? Source { get; set; }

    [Parameter(Position = 1)]
    [ValidateSet("SHA256", "SHA1", "SHA384", "SHA512", "MD5")]
    public string Algorithm { get; set; } = "SHA256";

    protected override void ProcessRecord()
    {
        TryRun(() =>
        {
            var source = ResolveLocation(Source!, nameof(Source));
            var options = BaseOptions() with { HashAlgorithm = DiskHasher.ParseAlgorithm(Algorithm) };
            var progress = new DiskProgress();
            DiskHashResult result;
            try
            {
                result = RunWithProgress(DiskHasher.HashAsync(source, options, progress, CancelToken), progress, "Get-NbdDiskHash", source.ToString());
            }
            catch (DiskOperationCanceledException e) when (CancelToken.IsCancellationRequested)
            {
                throw Stopped(e.Message);
            }
            WriteObject(DiskResultMapper.ToDiskHash(result));
        }, Source);
    }
}
