# NbdPowerShell root module. The cmdlets come from NbdPowerShell.dll (a nested module of the manifest).
# Removal (Remove-Module) stops the exports this process serves and warns, on the pipeline thread, about kernel
# devices that depended on them; pwsh exiting does the same through ModuleLifetime. The NbdPowerShell service and
# what it serves are not affected.
$ExecutionContext.SessionState.Module.OnRemove = {
    foreach ($warning in [NbdPowerShell.ModuleLifetime]::Remove()) {
        Write-Warning $warning
    }
}
