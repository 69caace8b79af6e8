. (Join-Path $PSScriptRoot 'common.ps1')

# Real kernel attachment: root and the nbd module (run here, or inside the VM runner by tools/PesterTest.ps1).
Describe 'Kernel attach' -Tag 'Kernel' -Skip:(-not $NbdTest.KernelReady) {
    BeforeAll {
        $script:mnt = Join-Path ([IO.Path]::GetTempPath()) "nbdps-mnt-$PID"
        $null = New-Item -ItemType Directory -Force $mnt
    }
    AfterEach {
        umount $mnt 2>$null
        $global:LASTEXITCODE = 0
        Get-NbdSession | Where-Object IsServedByThisProcess | Disconnect-NbdDevice -Force -Confirm:$false -ErrorAction SilentlyContinue
        Stop-AllTestExports
    }
    AfterAll { Remove-Item $mnt -Force -ErrorAction SilentlyContinue }

    It 'attaches a memory export in-process, formats, mounts, writes and reads back, then disconnects' -Skip:(-not $NbdTest.HasMkfsExt4) {
        $session = Start-NbdExport -Memory -Size 256MB -Name kdisk -Port 0 | Connect-NbdDevice
        $session | Should -BeOfType NbdPowerShell.NbdSession
        $session.Device | Should -Match '^/dev/nbd\d+$'
        $session.Size | Should -Be 256MB
        $session.IsServedByThisProcess | Should -BeTrue
        $session.Scope | Should -Be 'Process'
        $session.Transport | Should -Be 'Local socket pair (this process)'
        $session.Mode | Should -Be 'Netlink'

        mkfs.ext4 -q -F $session.Device
        $LASTEXITCODE | Should -Be 0
        mount $session.Device $mnt
        $LASTEXITCODE | Should -Be 0
        $data = [byte[]]::new(1MB); [Random]::new(42).NextBytes($data)
        [IO.File]::WriteAllBytes((Join-Path $mnt 'data.bin'), $data)
        sync
        umount $mnt
        mount -o ro $session.Device $mnt
        # Compare digests: piping a million bytes through Should takes minutes under emulation.
        $expected = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($data))
        (Get-FileHash -Algorithm SHA256 (Join-Path $mnt 'data.bin')).Hash | Should -Be $expected
        umount $mnt

        $listed = Get-NbdSession -Device $session.Device
        $listed.ExportName | Should -Be 'kdisk'
        $listed.IsConnected | Should -BeTrue
        $listed.Mode | Should -Be 'Netlink'
        Get-NbdSession | Where-Object IsServedByThisProcess | Disconnect-NbdDevice -Confirm:$false
        Get-NbdSession -Device "$($session.Device)*" | Should -BeNullOrEmpty
    }

    It 'attaches read-only: writes fail' {
        $session = Start-NbdExport -Memory -Size 16MB -Name kro -Port 0 | Connect-NbdDevice -ReadOnly
        $session.IsReadOnly | Should -BeTrue
        dd if=/dev/zero of=$($session.Device) bs=4096 count=1 oflag=direct 2>$null
        $LASTEXITCODE | Should -Not -Be 0
    }

    It 'refuses to disconnect a mounted device with NbdDeviceMounted unless -Force' -Skip:(-not $NbdTest.HasMkfsExt4) {
        $session = Start-NbdExport -Memory -Size 64MB -Name kmount -Port 0 | Connect-NbdDevice
        mkfs.ext4 -q -F $session.Device
        mount $session.Device $mnt
        try {
            { $session | Disconnect-NbdDevice -Confirm:$false -ErrorAction Stop } |
                Should -Throw -ErrorId 'NbdDeviceMounted,NbdPowerShell.Commands.DisconnectNbdDeviceCommand'
            (Get-NbdSession -Device $session.Device).MountPoints | Should -Contain $mnt
        }
        finally { umount $mnt }
        $session | Disconnect-NbdDevice -Confirm:$false
    }

    It 'attaches a second device at the same time, and -WhatIf disconnects nothing' {
        $a = Start-NbdExport -Memory -Size 16MB -Name k1 -Port 0 | Connect-NbdDevice
        $b = Start-NbdExport -Memory -Size 32MB -Name k2 -Port 0 | Connect-NbdDevice
        $a.Device | Should -Not -Be $b.Device
        (Get-NbdSession -Device $b.Device).Size | Should -Be 32MB
        Get-NbdSession -Device $b.Device | Disconnect-NbdDevice -WhatIf
        (Get-NbdSession -Device $b.Device).IsConnected | Should -BeTrue
        Get-NbdSession | Where-Object IsServedByThisProcess | Disconnect-NbdDevice -Confirm:$false -PassThru |
            ForEach-Object IsConnected | Should -Be @($false, $false)
    }

    It 'returns the attached device when the same export is connected twice, and -NewDevice attaches another' {
        $e = Start-NbdExport -Memory -Size 8MB -Name ktwice -Port 0
        $first = Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName ktwice
        $first.Changed | Should -BeTrue
        $second = Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName ktwice -Verbose 4>&1
        $session = $second | Where-Object { $_ -is [NbdPowerShell.NbdSession] }
        $session.Device | Should -Be $first.Device
        $session.Changed | Should -BeFalse
        (($second | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }).Message -join "`n") | Should -Match 'nothing changed'
        @(Get-NbdSession | Where-Object ExportName -eq 'ktwice').Count | Should -Be 1
        # The in-process pipeline form finds it too: the backend identifier is the export's URI.
        ($e | Connect-NbdDevice).Device | Should -Be $first.Device
        $third = Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName ktwice -NewDevice
        $third.Device | Should -Not -Be $first.Device
        @(Get-NbdSession | Where-Object ExportName -eq 'ktwice').Count | Should -Be 2
        Disconnect-NbdDevice -Device $first.Device, $third.Device -Confirm:$false
    }

    It 'attaches a remote export over TCP on a chosen device' {
        $e = Start-NbdExport -Memory -Size 8MB -Name ktcp -Port 0
        $free = Get-NbdDevice -Free | Select-Object -Last 1
        $s = Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName ktcp -Device $free.Device -BlockSize 512 -Timeout 30
        $s.Device | Should -Be $free.Device
        $s.BlockSize | Should -Be 512
        (Get-NbdSession -Device $s.Device).Uri | Should -Be "nbd://127.0.0.1:$($e.Port)/ktcp"
        Disconnect-NbdDevice -Device $s.Device -Confirm:$false
    }
}
