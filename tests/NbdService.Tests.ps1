. (Join-Path $PSScriptRoot 'common.ps1')

# The NbdPowerShell service, driven the way automation drives it: every step runs in its own pwsh process, which exits
# before the next one starts. The service runs on private directories and is stopped (or killed) at the end.
BeforeDiscovery {
    $script:CanRun = $IsLinux -and ((id -u) -eq '0')
    $script:HasQemuIo = [bool](Get-Command qemu-io -ErrorAction Ignore)
    $script:HasSystemdAnalyze = [bool](Get-Command systemd-analyze -ErrorAction Ignore)
}

Describe 'NbdPowerShell service' -Skip:(-not $CanRun) {
    BeforeAll {
        $script:saved = @{ Runtime = $env:NBDPOWERSHELL_RUNTIME_DIR; Config = $env:NBDPOWERSHELL_CONFIG_DIR }
        $script:root = Join-Path ([IO.Path]::GetTempPath()) "nbdps-service-$PID"
        $env:NBDPOWERSHELL_RUNTIME_DIR = Join-Path $root 'run'
        $env:NBDPOWERSHELL_CONFIG_DIR = Join-Path $root 'etc'
        $null = New-Item -ItemType Directory -Force $env:NBDPOWERSHELL_CONFIG_DIR
        # A short grace time, so the SIGTERM test can prove the bound.
        Set-Content (Join-Path $env:NBDPOWERSHELL_CONFIG_DIR 'nbdpowershell.json') '{ "version": 1, "shutdownGraceSeconds": 10, "exports": [], "devices": [] }'
        $script:image = Join-Path $root 'disk.img'
        $f = [IO.File]::Create($image); $f.SetLength(64MB); $f.Dispose()
        $script:socket = Join-Path $root 'disk.sock'
        $script:config = Join-Path $env:NBDPOWERSHELL_CONFIG_DIR 'nbdpowershell.json'
        $script:startCommand = "Start-NbdExport -Path '$image' -Name svcdisk -Port 0 -SocketPath '$socket' -Persistent"

        function script:ServicePid {
            $s = Invoke-PwshStep 'Get-NbdService | ConvertTo-Json -Compress'
            if ($s.Json.IsRunning) { [int]$s.Json.ProcessId } else { $null }
        }
        function script:Wait-ProcessGone([int]$Id, [int]$Seconds = 30) {
            $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
            while ((Get-Process -Id $Id -ErrorAction Ignore) -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 100 }
            -not (Get-Process -Id $Id -ErrorAction Ignore)
        }
    }

    AfterAll {
        $servicePid = ServicePid
        if ($servicePid) {
            Stop-Process -Id $servicePid -Force -ErrorAction Ignore
            $null = Wait-ProcessGone $servicePid
        }
        Stop-TestServiceProcess $root
        $env:NBDPOWERSHELL_RUNTIME_DIR = $saved.Runtime
        $env:NBDPOWERSHELL_CONFIG_DIR = $saved.Config
        Remove-Item -Recurse -Force $root -ErrorAction SilentlyContinue
    }

    It 'serves a persistent export after the pwsh that started it has exited' {
        $step = Invoke-PwshStep "$startCommand | ConvertTo-Json -Compress"
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $e = $step.Json
        $e.Scope | Should -Be 'Service'
        $e.IsPersistent | Should -BeTrue
        $e.Changed | Should -BeTrue
        $e.Port | Should -BeGreaterThan 0
        $e.Listeners | Should -Be @("127.0.0.1:$($e.Port)", $socket)
        $script:port = $e.Port
        $script:servicePid = [int]$e.ProcessId
        Get-Process -Id $servicePid | Should -Not -BeNullOrEmpty
        # The export is in the configuration file.
        (Get-Content $config -Raw | ConvertFrom-Json).exports.name | Should -Be 'svcdisk'
    }

    It 'is used by nbdinfo and qemu-io, over TCP and the Unix socket' -Skip:(-not ($NbdTest.HasNbdInfo -and $HasQemuIo)) {
        $info = nbdinfo --json "nbd://127.0.0.1:$port/svcdisk" | ConvertFrom-Json
        $LASTEXITCODE | Should -Be 0
        $info.exports[0].'export-size' | Should -Be 64MB
        qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 1M 1M' -c flush "nbd://127.0.0.1:$port/svcdisk" | Out-Null
        $LASTEXITCODE | Should -Be 0
        qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'read -P 0xcd 1M 1M' "nbd+unix:///svcdisk?socket=$socket" | Out-Null
        $LASTEXITCODE | Should -Be 0
    }

    It 'is listed by another process with its statistics' {
        $step = Invoke-PwshStep 'Get-NbdExport -Name svcdisk | ConvertTo-Json -Compress'
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Json.Scope | Should -Be 'Service'
        $step.Json.State | Should -Be 'Running'
        $step.Json.ProcessId | Should -Be $servicePid
        if ($NbdTest.HasNbdInfo -and $HasQemuIo) {
            $step.Json.BytesWritten | Should -BeGreaterOrEqual 2MB
            $step.Json.TotalConnections | Should -BeGreaterOrEqual 3
        }
        $status = (Invoke-PwshStep 'Get-NbdService | ConvertTo-Json -Compress').Json
        $status.IsRunning | Should -BeTrue
        $status.ProcessId | Should -Be $servicePid
        $status.ExportCount | Should -Be 1
        $status.ControlSocket | Should -Be (Join-Path $env:NBDPOWERSHELL_RUNTIME_DIR 'control.sock')
        $status.ShutdownGraceSeconds | Should -Be 10
    }

    It 'changes nothing when the same command runs again' {
        $before = Get-FileHash $config
        $step = Invoke-PwshStep "$startCommand -Verbose 4>&1 | ForEach-Object { if (`$_ -is [System.Management.Automation.VerboseRecord]) { Write-Host `$_.Message } else { `$_ } } | ConvertTo-Json -Compress"
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Json.Changed | Should -BeFalse
        $step.Json.Port | Should -Be $port
        $step.Output | Should -Match 'nothing changed'
        (Get-FileHash $config).Hash | Should -Be $before.Hash
    }

    It 'refuses a different definition under the same name with NbdExportAlreadyExists' {
        $step = Invoke-PwshStep "try { $startCommand -ReadOnly -ErrorAction Stop } catch { `$_.FullyQualifiedErrorId }"
        $step.Output.Trim() | Should -Be 'NbdExportAlreadyExists,NbdPowerShell.Commands.StartNbdExportCommand'
    }

    It 'comes back with its port and its flushed data after the service is killed with SIGKILL' {
        Stop-Process -Id $servicePid -Force
        Wait-ProcessGone $servicePid | Should -BeTrue
        (Invoke-PwshStep 'Get-NbdService | ConvertTo-Json -Compress').Json.IsRunning | Should -BeFalse
        $step = Invoke-PwshStep 'Start-NbdService | Out-Null; Get-NbdExport -Scope Service | ConvertTo-Json -Compress'
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Json.Name | Should -Be 'svcdisk'
        $step.Json.State | Should -Be 'Running'
        $step.Json.Port | Should -Be $port
        $script:servicePid = [int]$step.Json.ProcessId
        if ($HasQemuIo) {
            qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'read -P 0xcd 1M 1M' "nbd://127.0.0.1:$port/svcdisk" | Out-Null
            $LASTEXITCODE | Should -Be 0
        }
    }

    It 'is stopped from a third process and stays gone after a service restart' {
        $step = Invoke-PwshStep 'Get-NbdExport -Name svcdisk | Stop-NbdExport -Confirm:$false -PassThru | ConvertTo-Json -Compress'
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Json.State | Should -Be 'Stopped'
        $step.Json.Changed | Should -BeTrue
        (Get-Content $config -Raw | ConvertFrom-Json).exports | Should -BeNullOrEmpty
        $step = Invoke-PwshStep 'Stop-NbdService -Confirm:$false; Start-NbdService | Out-Null; @(Get-NbdExport -Scope Service).Count'
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Output.Trim() | Should -Be '0'
        $script:servicePid = ServicePid
        if ($NbdTest.HasNbdInfo) {
            nbdinfo "nbd://127.0.0.1:$port/svcdisk" 2>$null | Out-Null
            $LASTEXITCODE | Should -Not -Be 0
        }
    }

    It 'refuses callers that are not root with NbdPermissionDenied' -Skip:(-not (Test-Path /usr/bin/setpriv)) {
        foreach ($dir in $root, $env:NBDPOWERSHELL_RUNTIME_DIR) { chmod o+x $dir }
        $nobody = @('/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/env', 'HOME=/tmp', 'DOTNET_CLI_HOME=/tmp')
        # pwsh as a .NET tool lives under root's home, which nobody cannot read; the engine test
        # (ControlSocketTests, SO_PEERCRED) covers the refusal then.
        $pwshFile = @(Get-PwshCommand)[0][-1]
        & $nobody[0] $nobody[1..3] /usr/bin/test -r $pwshFile
        if ($LASTEXITCODE -ne 0) {
            $global:LASTEXITCODE = 0
            Set-ItResult -Skipped -Because "user nobody cannot read $pwshFile (pwsh installed under root's home)"
            return
        }
        $step = Invoke-PwshStep 'try { Get-NbdService -ErrorAction Stop } catch { "$($_.FullyQualifiedErrorId)|$($_.Exception.Message)" }' -Prefix $nobody
        $step.Output | Should -Match '^NbdPermissionDenied,NbdPowerShell.Commands.GetNbdServiceCommand\|'
        # Past the file permission, the service's own check (SO_PEERCRED) refuses as well.
        chmod 666 (Join-Path $env:NBDPOWERSHELL_RUNTIME_DIR 'control.sock')
        try {
            $step = Invoke-PwshStep 'try { Start-NbdExport -Memory -Size 1MB -Name x -Port 0 -Persistent -ErrorAction Stop } catch { "$($_.FullyQualifiedErrorId)|$($_.Exception.Message)" }' -Prefix $nobody
            $step.Output | Should -Match '^NbdPermissionDenied,NbdPowerShell.Commands.StartNbdExportCommand\|only root controls'
        }
        finally { chmod 600 (Join-Path $env:NBDPOWERSHELL_RUNTIME_DIR 'control.sock') }
        $global:LASTEXITCODE = 0
    }

    It 'exits 0 within its grace time on SIGTERM, draining a busy client' -Skip:(-not $HasQemuIo) {
        Invoke-PwshStep 'Stop-NbdService -Confirm:$false' | Out-Null
        # Started here, not on demand, so this test sees the exit code.
        Add-Type -Path (Join-Path (Split-Path $NbdModulePath) 'NbdPowerShell.Engine.dll')
        $command = [NbdPowerShell.Engine.Service.ServiceLauncher]::ServiceCommand($NbdModulePath, [NbdPowerShell.Engine.Service.ServicePaths]::FromEnvironment())
        $start = [Diagnostics.ProcessStartInfo]::new($command[0])
        foreach ($a in $command[1..($command.Count - 1)]) { $start.ArgumentList.Add($a) }
        $start.RedirectStandardError = $true
        $start.RedirectStandardOutput = $true
        $service = [Diagnostics.Process]::Start($start)
        try {
            $log = $service.StandardError.ReadToEndAsync()
            $deadline = [DateTime]::UtcNow.AddSeconds(120)
            while (-not (Test-Path (Join-Path $env:NBDPOWERSHELL_RUNTIME_DIR 'control.sock')) -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 200 }
            $e = Start-NbdExport -Path $image -Name busy -Port 0 -Persistent
            $e.ProcessId | Should -Be $service.Id
            # A client in the middle of a long stream of writes.
            # ProcessStartInfo.ArgumentList, not Start-Process: Start-Process joins its arguments with spaces
            # unquoted, which would split the qemu-io command in two.
            $writerStart = [Diagnostics.ProcessStartInfo]::new('qemu-io')
            foreach ($a in '-f', 'raw', '-c', 'write -P 0x11 0 48M', "nbd://127.0.0.1:$($e.Port)/busy") { $writerStart.ArgumentList.Add($a) }
            $writerStart.RedirectStandardOutput = $true
            $writerStart.RedirectStandardError = $true
            $writer = [Diagnostics.Process]::Start($writerStart)
            $writerErr = $writer.StandardError.ReadToEndAsync()
            $null = $writer.StandardOutput.ReadToEndAsync()
            # SIGTERM only once the writer is connected (the service counted its connection), so there is a client to drain.
            $deadline = [DateTime]::UtcNow.AddSeconds(120)
            while ((Get-NbdExport -Name busy -Scope Service).TotalConnections -eq 0 -and -not $writer.HasExited -and [DateTime]::UtcNow -lt $deadline) {
                Start-Sleep -Milliseconds 20
            }
            (Get-NbdExport -Name busy -Scope Service).TotalConnections | Should -BeGreaterThan 0 -Because "qemu-io must have connected ($(if ($writer.HasExited) { $writerErr.Result }))"
            $clock = [Diagnostics.Stopwatch]::StartNew()
            kill -TERM $service.Id
            $service.WaitForExit(30000) | Should -BeTrue
            $clock.Elapsed.TotalSeconds | Should -BeLessThan 10
            $service.ExitCode | Should -Be 0
            $log.Result | Should -Match 'Stopping \(SIGTERM\)'
            $log.Result | Should -Match 'Stopped'
            $writer.WaitForExit(30000) | Should -BeTrue
        }
        finally {
            if (-not $service.HasExited) { $service.Kill() }
            $service.Dispose()
            if ($writer -and -not $writer.HasExited) { $writer.Kill() }
        }
    }

    It 'writes a systemd unit that systemd-analyze verify accepts, and removes it again' -Skip:(-not $HasSystemdAnalyze) {
        $unit = Join-Path $root 'nbdpowershell.service'
        $warnings = $null
        $installed = Install-NbdService -Path $unit -WarningVariable warnings -WarningAction SilentlyContinue
        $installed.IsInstalled | Should -BeTrue
        $installed.UnitPath | Should -Be $unit
        $text = Get-Content $unit -Raw
        $text | Should -Match 'Type=notify'
        $text | Should -Match ([regex]::Escape("NBDPOWERSHELL_RUNTIME_DIR=$env:NBDPOWERSHELL_RUNTIME_DIR"))
        $text | Should -Match 'ExecStart=.*NbdService\]::Run'
        if (-not (Test-Path /run/systemd/system)) {
            ($warnings -join "`n") | Should -Match 'systemd is not running.*on demand'
        }
        $verify = systemd-analyze verify $unit 2>&1
        $LASTEXITCODE | Should -Be 0 -Because ($verify -join "`n")
        (Install-NbdService -Path $unit -WarningAction SilentlyContinue).Changed | Should -BeFalse
        Uninstall-NbdService -Path $unit -Confirm:$false
        Test-Path $unit | Should -BeFalse
    }
}
