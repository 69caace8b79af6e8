. (Join-Path $PSScriptRoot 'common.ps1')

# Connect-NbdDevice -Persistent through the service's supervisor, against nbdkit that is killed and started again on
# the same port: the device reads on with the right data, Get-NbdSession tells what happened, and supervision resumes
# after a service restart. The service runs on private directories and is killed at the end.
BeforeDiscovery {
    $script:HasNbdkit = [bool](Get-Command nbdkit -ErrorAction Ignore)
}

Describe 'Supervised devices' -Tag 'Kernel' -Skip:(-not ($NbdTest.KernelReady -and $HasNbdkit)) {
    BeforeAll {
        $script:saved = @{ Runtime = $env:NBDPOWERSHELL_RUNTIME_DIR; Config = $env:NBDPOWERSHELL_CONFIG_DIR }
        $script:root = Join-Path ([IO.Path]::GetTempPath()) "nbdps-supervise-$PID"
        $env:NBDPOWERSHELL_RUNTIME_DIR = Join-Path $root 'run'
        $env:NBDPOWERSHELL_CONFIG_DIR = Join-Path $root 'etc'
        $null = New-Item -ItemType Directory -Force $env:NBDPOWERSHELL_CONFIG_DIR
        $script:image = Join-Path $root 'ro.img'
        $bytes = [byte[]]::new(8MB)
        [Security.Cryptography.RandomNumberGenerator]::Fill($bytes)
        [IO.File]::WriteAllBytes($image, $bytes)
        $script:imageHash = (Get-FileHash -Algorithm SHA256 $image).Hash
        # A port that is free now; nbdkit is started on it again after each kill, as a rebooted server would be.
        $script:port = Get-FreeTcpPort
        $script:uri = "nbd://127.0.0.1:$port/img"
        $script:nbdkit = $null

        function script:Start-Nbdkit {
            $start = [Diagnostics.ProcessStartInfo]::new('nbdkit')
            foreach ($a in '-f', '-r', '-i', '127.0.0.1', '-p', "$port", 'file', $image) { $start.ArgumentList.Add($a) }
            $script:nbdkit = [Diagnostics.Process]::Start($start)
            $deadline = [DateTime]::UtcNow.AddSeconds(60)
            while ([DateTime]::UtcNow -lt $deadline) {
                $probe = [System.Net.Sockets.TcpClient]::new()
                try { $probe.Connect('127.0.0.1', $port); return } catch { Start-Sleep -Milliseconds 100 } finally { $probe.Dispose() }
            }
            throw "nbdkit did not listen on $port within 60 s"
        }
        function script:Stop-Nbdkit {
            if ($script:nbdkit -and -not $script:nbdkit.HasExited) {
                $script:nbdkit.Kill()
                $null = $script:nbdkit.WaitForExit(10000)
            }
        }
        # Reads the whole device (O_DIRECT, past any cache) and returns its SHA-256, or the error dd reported.
        function script:Read-DeviceHash([string]$Device) {
            $hash = sh -c "dd if=$Device bs=1M iflag=direct status=none | sha256sum" 2>&1
            ("$hash" -split ' ')[0].ToUpperInvariant()
        }
        function script:Wait-Session([string]$Device, [scriptblock]$Condition, [int]$Seconds = 600) {
            $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
            do {
                $s = Get-NbdSession -Device $Device
                if ($s -and (& $Condition $s)) { return $s }
                Start-Sleep -Milliseconds 250
            } while ([DateTime]::UtcNow -lt $deadline)
            throw "the session of $Device did not reach the expected state within $Seconds s: $($s | Format-List State, ReconnectCount, StatusMessage, History | Out-String)"
        }
        Start-Nbdkit
    }

    AfterAll {
        Get-NbdSession | Where-Object Uri -eq $uri | Disconnect-NbdDevice -Force -Confirm:$false -ErrorAction SilentlyContinue
        $service = Get-NbdService
        if ($service.IsRunning) {
            Stop-Process -Id $service.ProcessId -Force -ErrorAction Ignore
        }
        Stop-Nbdkit
        $env:NBDPOWERSHELL_RUNTIME_DIR = $saved.Runtime
        $env:NBDPOWERSHELL_CONFIG_DIR = $saved.Config
        Remove-Item -Recurse -Force $root -ErrorAction SilentlyContinue
    }

    It 'reads on through a server restart, shows what happened, and is supervised again after a service restart' {
        $session = Connect-NbdDevice -Uri $uri -Driver Nbd -ReadOnly -Persistent -DeadConnectionTimeout 900 -Timeout 60 -Confirm:$false
        $session.State | Should -Be 'Connected'
        $session.Scope | Should -Be 'Service'
        $session.IsPersistent | Should -BeTrue
        $session.ReconnectCount | Should -Be 0
        $session.ActiveUri | Should -Be $uri
        $device = $session.Device
        Read-DeviceHash $device | Should -Be $imageHash
        (Get-Content -Raw (Join-Path $env:NBDPOWERSHELL_CONFIG_DIR 'nbdpowershell.json') | ConvertFrom-Json).devices.kind | Should -Be 'supervised'

        # The server dies and comes back on the same port: a read issued while it is down waits and then succeeds.
        Stop-Nbdkit
        $null = Wait-Session $device { param($s) $s.State -eq 'Reconnecting' } 120
        $reading = Start-ThreadJob -ScriptBlock { param($d) sh -c "dd if=$d bs=1M iflag=direct status=none | sha256sum" 2>&1 } -ArgumentList $device
        Start-Sleep -Seconds 3
        Start-Nbdkit
        $read = $reading | Wait-Job -Timeout 900 | Receive-Job
        $reading | Remove-Job -Force
        ("$read" -split ' ')[0].ToUpperInvariant() | Should -Be $imageHash
        $s = Wait-Session $device { param($s) $s.State -eq 'Connected' -and $s.ReconnectCount -eq 1 }
        $s.LastLossTime | Should -Not -BeNullOrEmpty
        $s.LastLossReason | Should -Not -BeNullOrEmpty
        $s.History.Event | Should -Contain 'ConnectionLost'
        $s.History.Event | Should -Contain 'Reconnected'

        # The service restarts: the device stays attached, the new service adopts it and heals the next loss.
        Stop-NbdService -Confirm:$false
        (Get-NbdDevice -Device $device).IsConnected | Should -BeTrue
        $null = Start-NbdService -Confirm:$false
        $adopted = Wait-Session $device { param($s) $s.State -eq 'Connected' -and $s.History.Event -contains 'Adopted' } 300
        $adopted.IsPersistent | Should -BeTrue
        Stop-Nbdkit
        Start-Sleep -Seconds 2
        Start-Nbdkit
        $healed = Wait-Session $device { param($s) $s.State -eq 'Connected' -and $s.ReconnectCount -ge 1 }
        $healed.History.Event | Should -Contain 'Reconnected'
        Read-DeviceHash $device | Should -Be $imageHash

        Disconnect-NbdDevice -Device $device -Confirm:$false
        (Get-NbdDevice -Device $device).IsConnected | Should -BeFalse
        @((Get-Content -Raw (Join-Path $env:NBDPOWERSHELL_CONFIG_DIR 'nbdpowershell.json') | ConvertFrom-Json).devices).Count | Should -Be 0
    }
}
