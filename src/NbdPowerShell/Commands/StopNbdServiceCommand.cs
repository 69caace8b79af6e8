using System.Diagnostics;
using System.Management.Automation;
using NbdPowerShell.Engine.Hosting;
using NbdPowerShell.Engine.Service;

namespace NbdPowerShell.Commands;

/// <summary>
/// Stops the NbdPowerShell service gracefully, as SIGTERM does: no new work, in-flight requests drain, file backends
/// are flushed. Its persistent exports and devices stay in the configuration and come back at the next start.
/// </summary>
[Cmdlet(VerbsLifecycle.Stop, "NbdService", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(NbdService))]
public sealed class StopNbdServiceCommand : NbdCmdlet
{
    /// <summary>Seconds to wait for the service to exit.</summary>
    [Parameter]
    [ValidateRange(1, 3600)]
    public int Timeout { get; set; } = 120;

    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override bool LinuxOnly => true;

    protected override void ProcessRecord()
    {
        var client = Hosts.Service;
        TryRun(() =>
        {
            var status = StatusOf(client);
            if (status is null)
            {
                WriteVerbose("The NbdPowerShell service is not running; nothing changed.");
                if (PassThru)
                    WriteObject(OutputMapper.ToService(client.Paths, null, SystemdUnit.DefaultPath));
                return;
            }
            var devices = Wait(client.GetDevicesAsync(CancelToken), "Stop-NbdService", "Asking the service");
            var broken = devices.Where(d => d.State == "Connected" && d.Transport is "TLS relay" or "Local socket pair").ToList();
            string target = $"NbdPowerShell service (pid {status.ProcessId}, {status.ExportCount} export(s), {status.DeviceCount} device(s))";
            if (!ShouldProcess(target, "Stop"))
                return;
            foreach (var d in broken)
                WriteWarning(d.Kind == Engine.Kernel.Supervision.SupervisedDeviceKind.KindName
                    // A supervised device is reconnected by the next service, as long as it starts within the dead-connection timeout.
                    ? $"{d.Device} reaches {d.Uri} through a {d.Transport!.ToLowerInvariant()} in the service; its I/O waits until the service is started again and reconnects it, and fails with EIO after {d.Counters.GetValueOrDefault("DeadConnectionTimeoutSeconds")} s."
                    : $"{d.Device} reaches {d.Uri} through a {d.Transport!.ToLowerInvariant()} in the service; its I/O fails until it is disconnected and connected again.");
            if (status.IsSystemdManaged && SystemdUnit.IsSystemdRunning)
                SystemdUnit.Systemctl("stop", SystemdUnit.UnitName);
            else
                Wait(client.StopServiceAsync(CancelToken), "Stop-NbdService", "Asking the service to stop");
            Wait(WaitUntilGoneAsync(client, TimeSpan.FromSeconds(Timeout), CancelToken), "Stop-NbdService", $"Waiting for the service (pid {status.ProcessId}) to stop");
            WriteVerbose($"The NbdPowerShell service (pid {status.ProcessId}) stopped.");
            if (PassThru)
                WriteObject(OutputMapper.ToService(client.Paths, null, SystemdUnit.DefaultPath) with { Changed = true });
        }, client.Paths.ControlSocket);
    }

    private static async Task WaitUntilGoneAsync(ServiceClient client, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            try
            {
                await client.HelloAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (NbdServiceNotRunningException)
            {
                return;
            }
            catch (NbdHostException e) when (e.ErrorId == ErrorIds.ServiceUnavailable)
            {
                // Stopping: it closes connections without answering; keep looking until the socket is gone.
            }
            await Task.Delay(200, cancellationToken).ConfigureAwait(false);
        }
        throw new NbdHostException(ErrorIds.Timeout, $"The NbdPowerShell service was still running after {timeout.TotalSeconds:0} s; see its log ({client.Paths.LogFile}).");
    }
}
