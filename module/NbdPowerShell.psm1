# NbdPowerShell root module. The cmdlets come from NbdPowerShell.dll (a nested module of the manifest).
# This script only handles removal: Remove-Module stops the exports this process serves and warns, on the
# pipeline thread, about kernel devices that are still attached to them.
$ExecutionContext.SessionState.Module.OnRemove = {
    $null = [NbdPowerShell.ModuleLifetime]::StopExports()
    foreach ($warning in [NbdPowerShell.ModuleLifetime]::TakeWarnings()) {
        Write-Warning $warning
    }
}
