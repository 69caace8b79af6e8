# Starting another pwsh from a test or a test runner (dot-sourced by common.ps1 and tools/PesterTest.ps1).
#
# pwsh may run as a .NET tool: then [Environment]::ProcessPath is dotnet and the first command-line argument is
# pwsh.dll, and (Get-Process -Id $PID).Path is dotnet too. The tool's `pwsh` shim forks the real pwsh, so a kill
# of the shim leaves PowerShell running. Starting exactly what runs this process gives a child that a kill stops.

# The command (program, then leading arguments) that starts a pwsh like this one.
function global:Get-PwshCommand {
    $exe = [Environment]::ProcessPath
    if ([IO.Path]::GetFileNameWithoutExtension($exe) -eq 'dotnet') {
        , @($exe, [Environment]::GetCommandLineArgs()[0])
    }
    else {
        , @($exe)
    }
}

# Runs a child pwsh with -NoProfile -NonInteractive and the given arguments, with environment changes (a $null
# value removes the variable), and waits at most TimeoutSeconds; on timeout kills its whole process tree and throws. Returns exit code and
# output (stdout and stderr).
function global:Invoke-ChildPwsh {
    param(
        [Parameter(Mandatory)] [string[]]$ArgumentList,
        [hashtable]$Environment = @{},
        [Parameter(Mandatory)] [int]$TimeoutSeconds,
        [string]$WorkingDirectory = (Get-Location).ProviderPath
    )
    $command = Get-PwshCommand
    $info = [Diagnostics.ProcessStartInfo]::new($command[0])
    foreach ($a in @($command | Select-Object -Skip 1) + '-NoProfile' + '-NonInteractive' + $ArgumentList) { $info.ArgumentList.Add($a) }
    foreach ($k in $Environment.Keys) {
        if ($null -eq $Environment[$k]) { $null = $info.Environment.Remove($k) } else { $info.Environment[$k] = [string]$Environment[$k] }
    }
    $info.WorkingDirectory = $WorkingDirectory
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $info.RedirectStandardInput = $true
    $process = [Diagnostics.Process]::Start($info)
    try {
        $process.StandardInput.Close()
        # Read both pipes concurrently, so a child filling one of them never blocks.
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
        if (-not $process.WaitForExit($TimeoutSeconds * 1000)) {
            $process.Kill($true)
            $process.WaitForExit()
            throw "child pwsh did not finish in $TimeoutSeconds s (killed): $($ArgumentList -join ' ')`n$($stdout.GetAwaiter().GetResult())$($stderr.GetAwaiter().GetResult())"
        }
        $process.WaitForExit()
        [pscustomobject]@{
            ExitCode = $process.ExitCode
            Output   = $stdout.GetAwaiter().GetResult() + $stderr.GetAwaiter().GetResult()
        }
    }
    finally {
        if (-not $process.HasExited) { $process.Kill($true) }
        $process.Dispose()
    }
}
