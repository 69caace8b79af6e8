. (Join-Path $PSScriptRoot 'common.ps1')

# Connect-NbdDevice -Driver Fuse on the host (FUSE and loop devices work here, the nbd module does not): the
# NbdPowerShell service, on private directories, serves each export as a FUSE file bound to a loop device. Peers are
# real: an export of this module, nbdkit and qemu-nbd. Only loop devices and mounts these tests created are touched;
# every process they start is killed at the end.
BeforeDiscovery {
    $script:CanRun = $IsLinux -and ((id -u) -eq '0') -and (Test-Path /dev/fuse) -and (Test-Path /dev/loop-control)
    $script:HasNbdkit = [bool](Get-Command nbdkit -ErrorAction Ignore)
    $script:HasQemuNbd = [bool](Get-Command qemu-nbd -ErrorAction Ignore)
    $script:HasFsTools = [bool](Get-Command mkfs.ext4 -ErrorAction Ignore) -and [bool](Get-Command fsck.ext4 -ErrorAction Ignore)
    $script:HasDiscardTools = [bool](Get-Command blkdiscard -ErrorAction Ignore) -and [bool](Get-Command nbdinfo -ErrorAction Ignore)
}

Describe 'FUSE devices (Connect-NbdDevice -Driver Fuse)' -Skip:(-not $CanRun) {
    BeforeAll {
        $script:saved = @{ Runtime = $env:NBDPOWERSHELL_RUNTIME_DIR; Config = $env:NBDPOWERSHELL_CONFIG_DIR }
        $script:root = Join-Path ([IO.Path]::GetTempPath()) "nbdps-fuse-$PID"
        $env:NBDPOWERSHELL_RUNTIME_DIR = Join-Path $root 'run'
        $env:NBDPOWERSHELL_CONFIG_DIR = Join-Path $root 'etc'
        $script:mnt = Join-Path $root 'mnt'
        $null = New-Item -ItemType Directory -Force $env:NBDPOWERSHELL_CONFIG_DIR, $mnt
        $script:fuseDir = Join-Path $env:NBDPOWERSHELL_RUNTIME_DIR 'fuse'
        $script:peers = [Collections.Generic.List[Diagnostics.Process]]::new()

        # A peer server in the foreground, killed in AfterAll; returns once its Unix socket exists.
        function script:Start-Peer([string]$Socket, [string[]]$Command) {
            $info = [Diagnostics.ProcessStartInfo]::new($Command[0])
            foreach ($a in $Command | Select-Object -Skip 1) { $info.ArgumentList.Add($a) }
            $info.RedirectStandardOutput = $true
            $info.RedirectStandardError = $true
            $p = [Diagnostics.Process]::Start($info)
            $peers.Add($p)
            $deadline = [DateTime]::UtcNow.AddSeconds(30)
            while (-not (Test-Path $Socket) -and -not $p.HasExited -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 50 }
            if (-not (Test-Path $Socket)) { throw "$($Command -join ' ') did not create $Socket" }
        }
        function script:New-Image([string]$Name, [long]$Size) {
            $path = Join-Path $root $Name
            $f = [IO.File]::Create($path); $f.SetLength($Size); $f.Dispose()
            $path
        }
        function script:ServicePid {
            $s = Get-NbdService
            if ($s.IsRunning) { [int]$s.ProcessId } else { $null }
        }
        function script:Wait-ProcessGone([int]$Id, [int]$Seconds = 30) {
            $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
            while ((Get-Process -Id $Id -ErrorAction Ignore) -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 100 }
            -not (Get-Process -Id $Id -ErrorAction Ignore)
        }
        # What the kernel still has of our FUSE devices: mounts under our runtime directory, loop devices bound to files there.
        function script:Get-Leftovers {
            @(Get-Content /proc/self/mountinfo | Where-Object { $_.Contains(" $fuseDir/") })
            @(losetup -a | Where-Object { $_.Contains("$fuseDir/") })
        }
        function script:Get-FuseSessions { @(Get-NbdSession | Where-Object Driver -eq 'Fuse') }

        # Our own export, served by this process over a Unix socket; nbdkit and qemu-nbd over theirs.
        $script:oursSocket = Join-Path $root 'ours.sock'
        $null = Start-NbdExport -Path (New-Image 'ours.img' 256MB) -Name ours -SocketPath $oursSocket
        $script:nbdkitSocket = Join-Path $root 'nbdkit.sock'
        if ($HasNbdkit) { Start-Peer $nbdkitSocket @('nbdkit', '-f', '-U', $nbdkitSocket, 'memory', '256M') }
        $script:qemuSocket = Join-Path $root 'qemu.sock'
        if ($HasQemuNbd) { Start-Peer $qemuSocket @('qemu-nbd', '-t', '-e', '4', '-f', 'raw', '-x', 'qexp', '-k', $qemuSocket, (New-Image 'qemu.img' 256MB)) }
    }

    AfterEach {
        if ((Get-Content /proc/self/mountinfo) -match " $([regex]::Escape($mnt)) ") { umount $mnt 2>$null }
        $global:LASTEXITCODE = 0
        if (ServicePid) { Get-FuseSessions | Disconnect-NbdDevice -Force -Confirm:$false -ErrorAction SilentlyContinue }
    }

    AfterAll {
        if ($servicePid = ServicePid) {
            Stop-Process -Id $servicePid -Force -ErrorAction Ignore
            $null = Wait-ProcessGone $servicePid
        }
        # A service a failed test left behind (found by our private directory in its command line).
        Stop-TestServiceProcess $root
        foreach ($p in $peers) {
            if (-not $p.HasExited) { $p.Kill($true); $p.WaitForExit(10000) }
            $p.Dispose()
        }
        Stop-AllTestExports
        # A killed service leaves its mounts and loop devices; remove ours (and only ours) before deleting the directory.
        foreach ($line in @(losetup -a | Where-Object { $_.Contains("$fuseDir/") })) { losetup -d ($line -split ':')[0] 2>$null }
        foreach ($line in @(Get-Content /proc/self/mountinfo | Where-Object { $_.Contains(" $fuseDir/") })) { umount -l ($line -split ' ')[4] 2>$null }
        $global:LASTEXITCODE = 0
        $env:NBDPOWERSHELL_RUNTIME_DIR = $saved.Runtime
        $env:NBDPOWERSHELL_CONFIG_DIR = $saved.Config
        Remove-Item -Recurse -Force $root -ErrorAction SilentlyContinue
    }

    It 'keeps an ext4 file system on <Peer> across detach and attach: 64 MiB written, same hash, fsck clean' -Skip:(-not $HasFsTools) -ForEach @(
        @{ Peer = 'our export'; Socket = 'ours.sock'; Export = 'ours'; Needs = $true }
        @{ Peer = 'nbdkit memory'; Socket = 'nbdkit.sock'; Export = ''; Needs = $HasNbdkit }
        @{ Peer = 'qemu-nbd'; Socket = 'qemu.sock'; Export = 'qexp'; Needs = $HasQemuNbd }
    ) {
        if (-not $Needs) { Set-ItResult -Skipped -Because "$Peer is not installed"; return }
        $Target = @{ SocketPath = Join-Path $root $Socket; ExportName = $Export }
        $s = Connect-NbdDevice @Target -Driver Fuse -Confirm:$false -ErrorAction Stop
        $s.Driver | Should -Be 'Fuse'
        $s.Device | Should -Match '^/dev/loop\d+$'
        $s.Scope | Should -Be 'Service'
        $s.Size | Should -Be 256MB
        $s.IsReadOnly | Should -BeFalse
        $s.BackingFile | Should -BeLike "$fuseDir/*/disk"
        $s.Changed | Should -BeTrue
        losetup -n -O BACK-FILE $s.Device | Should -Be $s.BackingFile

        mkfs.ext4 -q -F $s.Device
        $LASTEXITCODE | Should -Be 0
        mount $s.Device $mnt
        $LASTEXITCODE | Should -Be 0
        dd if=/dev/urandom of="$mnt/data" bs=1M count=64 status=none
        $LASTEXITCODE | Should -Be 0
        sync
        $hash = (Get-FileHash -Algorithm SHA256 "$mnt/data").Hash

        # Listed with its mount point and statistics; refused while mounted.
        $live = Get-NbdSession -Device $s.Device
        $live.Driver | Should -Be 'Fuse'
        $live.MountPoints | Should -Contain $mnt
        $live.Counters['BytesWritten'] | Should -BeGreaterOrEqual 64MB
        $live.Counters['Flushes'] | Should -BeGreaterThan 0
        $live.Transport | Should -BeLike 'FUSE and loop device (NbdPowerShell service, pid *)'
        Disconnect-NbdDevice -Device $s.Device -Confirm:$false -ErrorVariable refused -ErrorAction SilentlyContinue
        $refused[0].FullyQualifiedErrorId | Should -BeLike 'NbdDeviceMounted,*'
        (Get-NbdSession -Device $s.Device).State | Should -Be 'Connected'

        umount $mnt
        $LASTEXITCODE | Should -Be 0
        $gone = Disconnect-NbdDevice -Device $s.Device -Confirm:$false -PassThru -ErrorAction Stop
        $gone.State | Should -Be 'Disconnected'
        Get-FuseSessions | Should -BeNullOrEmpty
        Get-Leftovers | Should -BeNullOrEmpty

        $again = Connect-NbdDevice @Target -Driver Fuse -Confirm:$false -ErrorAction Stop
        mount -o ro $again.Device $mnt
        $LASTEXITCODE | Should -Be 0
        (Get-FileHash -Algorithm SHA256 "$mnt/data").Hash | Should -Be $hash
        umount $mnt
        fsck.ext4 -n -f $again.Device 2>&1 | Out-Null
        $LASTEXITCODE | Should -Be 0
        Disconnect-NbdDevice -Device $again.Device -Confirm:$false -ErrorAction Stop
        Get-Leftovers | Should -BeNullOrEmpty
    }

    It 'returns the attached session for the same export instead of a second device' {
        $first = Connect-NbdDevice -SocketPath $oursSocket -ExportName ours -Driver Fuse -Confirm:$false -ErrorAction Stop
        $second = Connect-NbdDevice -SocketPath $oursSocket -ExportName ours -Driver Fuse -Confirm:$false -ErrorAction Stop
        $second.Device | Should -Be $first.Device
        $second.Changed | Should -BeFalse
        @(Get-FuseSessions).Count | Should -Be 1
    }

    It 'gives a read-only loop device for a read-only export, and writes to it fail' -Skip:(-not $HasNbdkit) {
        $socket = Join-Path $root 'ro.sock'
        Start-Peer $socket @('nbdkit', '-f', '-r', '-U', $socket, 'memory', '16M')
        $s = Connect-NbdDevice -SocketPath $socket -Driver Fuse -Confirm:$false -ErrorAction Stop
        $s.IsReadOnly | Should -BeTrue
        blockdev --getro $s.Device | Should -Be '1'
        dd if=/dev/zero of="$($s.Device)" bs=4096 count=1 oflag=direct status=none 2>$null
        $LASTEXITCODE | Should -Not -Be 0
        dd if="$($s.Device)" of=/dev/null bs=1M count=16 iflag=direct status=none
        $LASTEXITCODE | Should -Be 0
    }

    It 'punches a hole on the server when a range of the loop device is discarded' -Skip:(-not ($HasNbdkit -and $HasDiscardTools)) {
        $socket = Join-Path $root 'discard.sock'
        Start-Peer $socket @('nbdkit', '-f', '-U', $socket, 'memory', '64M')
        $s = Connect-NbdDevice -SocketPath $socket -Driver Fuse -Confirm:$false -ErrorAction Stop
        dd if=/dev/urandom of="$($s.Device)" bs=1M count=8 oflag=direct conv=fsync status=none
        $LASTEXITCODE | Should -Be 0
        $map = nbdinfo --map --json "nbd+unix:///?socket=$socket" | ConvertFrom-Json
        @($map | Where-Object { $_.offset -lt 8MB -and ($_.type -band 1) }) | Should -BeNullOrEmpty -Because 'the first 8 MiB were written'
        blkdiscard -o 2MiB -l 4MiB $s.Device
        $LASTEXITCODE | Should -Be 0
        $map = nbdinfo --map --json "nbd+unix:///?socket=$socket" | ConvertFrom-Json
        # All of [2 MiB, 6 MiB) is a hole now; the data around it is still data.
        $holeBytes = 0
        foreach ($e in $map | Where-Object { $_.type -band 1 }) {
            $from = [Math]::Max([long]$e.offset, 2MB); $to = [Math]::Min([long]$e.offset + [long]$e.length, 6MB)
            if ($to -gt $from) { $holeBytes += $to - $from }
        }
        $holeBytes | Should -Be 4MB
        @($map | Where-Object { $_.offset -lt 2MB -and ($_.type -band 1) }) | Should -BeNullOrEmpty
        @($map | Where-Object { $_.offset -ge 6MB -and $_.offset -lt 8MB -and ($_.type -band 1) }) | Should -BeNullOrEmpty
        (Get-NbdSession -Device $s.Device).Counters['Zeroes'] | Should -BeGreaterThan 0
    }

    It 'is attached by one pwsh, keeps working after it exits, and is detached by another' {
        $step = Invoke-PwshStep "Connect-NbdDevice -SocketPath '$oursSocket' -ExportName ours -Driver Fuse -Confirm:`$false | ConvertTo-Json -Compress -Depth 3"
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $device = $step.Json.Device
        $device | Should -Match '^/dev/loop\d+$'
        $step.Json.Driver | Should -Be 'Fuse'
        # The attaching pwsh is gone; the service still serves the device.
        dd if=/dev/urandom of=$device bs=1M count=4 oflag=direct conv=fsync status=none
        $LASTEXITCODE | Should -Be 0
        $step = Invoke-PwshStep 'Get-NbdSession | Where-Object Driver -eq Fuse | Disconnect-NbdDevice -Confirm:$false -PassThru | ConvertTo-Json -Compress -Depth 3'
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $step.Json.Device | Should -Be $device
        $step.Json.State | Should -Be 'Disconnected'
        Get-FuseSessions | Should -BeNullOrEmpty
        Get-Leftovers | Should -BeNullOrEmpty
    }

    It 'leaves nothing stale after the service is killed with SIGKILL and started again' {
        $s = Connect-NbdDevice -SocketPath $oursSocket -ExportName ours -Driver Fuse -Confirm:$false -ErrorAction Stop
        $killed = ServicePid
        $killed | Should -Not -BeNullOrEmpty
        @(Get-Leftovers).Count | Should -Be 2 -Because 'the device has a FUSE mount and a loop device'
        Stop-Process -Id $killed -Force
        Wait-ProcessGone $killed | Should -BeTrue
        Get-Leftovers | Should -Not -BeNullOrEmpty -Because 'a killed service cannot clean up after itself'

        $service = Start-NbdService -Confirm:$false -ErrorAction Stop
        $service.ProcessId | Should -Not -Be $killed
        Get-Leftovers | Should -BeNullOrEmpty
        $status = Get-NbdService
        $status.CleanedUp.Count | Should -Be 1
        $status.CleanedUp[0] | Should -BeLike "*$($s.Device)*"
        Get-FuseSessions | Should -BeNullOrEmpty
    }
}

# In the VM the nbd driver exists: Auto must pick it (on the host, without it, the tests above use FUSE).
Describe 'Driver choice with the nbd driver present' -Tag 'Kernel' -Skip:(-not $NbdTest.KernelReady) {
    AfterEach {
        Get-NbdSession | Where-Object IsServedByThisProcess | Disconnect-NbdDevice -Force -Confirm:$false -ErrorAction SilentlyContinue
        Stop-AllTestExports
    }

    It 'attaches with the nbd driver when -Driver Auto' {
        $session = Start-NbdExport -Memory -Size 16MB -Name autodrv -Port 0 | Connect-NbdDevice -Driver Auto -WarningVariable warned -Confirm:$false
        $session.Driver | Should -Be 'Nbd'
        $session.Device | Should -Match '^/dev/nbd\d+$'
        $warned | Should -BeNullOrEmpty
    }
}
