. (Join-Path $PSScriptRoot 'common.ps1')

Describe 'Find-NbdExport' -Skip:(-not $IsLinux) {
    BeforeAll {
        $script:e = Start-NbdExport -Memory -Size 4MB -Name find-rw -Port 0 -Description 'scratch disk'
        $null = Start-NbdExport -Memory -Size 2MB -Name find-ro -Port $script:e.Port -ReadOnly
    }
    AfterAll { Stop-AllTestExports }

    It 'lists name, size, description and flags' {
        $list = Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port
        $list | Should -HaveCount 2
        $list[0] | Should -BeOfType NbdPowerShell.NbdRemoteExport
        $rw = $list | Where-Object Name -eq 'find-rw'
        $rw.Size | Should -Be 4MB
        $rw.Description | Should -Be 'scratch disk'
        $rw.IsReadOnly | Should -BeFalse
        $rw.CanFlush | Should -BeTrue
        $rw.ComputerName | Should -Be '127.0.0.1'
        $rw.Port | Should -Be $e.Port
        $rw.Uri | Should -Be "nbd://127.0.0.1:$($e.Port)/find-rw"
        ($list | Where-Object Name -eq 'find-ro').IsReadOnly | Should -BeTrue
    }

    It 'takes ComputerName and Port by property name' {
        ([pscustomobject]@{ ComputerName = '127.0.0.1'; Port = $e.Port } | Find-NbdExport).Name | Should -Contain 'find-ro'
    }

    It 'takes NBD URIs, by parameter and by property name, and lists only the export a URI names' {
        $all = Find-NbdExport -Uri "nbd://127.0.0.1:$($e.Port)"
        $all.Name | Sort-Object | Should -Be @('find-ro', 'find-rw')
        $one = Find-NbdExport -Uri "nbd://127.0.0.1:$($e.Port)/find-ro"
        $one.Name | Should -Be 'find-ro'
        # A Uri property binds by name.
        ([pscustomobject]@{ Uri = "nbd://127.0.0.1:$($e.Port)/find-rw" } | Find-NbdExport).Name | Should -Be 'find-rw'
        (Find-NbdExport -Uri $one.Uri).Uri | Should -Be $one.Uri
    }

    It 'writes NbdExportNameUnknown for a URI naming an export the server does not have' {
        { Find-NbdExport -Uri "nbd://127.0.0.1:$($e.Port)/nope" -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdExportNameUnknown,NbdPowerShell.Commands.FindNbdExportCommand'
    }

    It 'writes NbdUriInvalid for a value that is not an NBD URI, and lists nothing' {
        $out = Find-NbdExport -Uri 'http://127.0.0.1/x', "nbd://127.0.0.1:$($e.Port)" -ErrorVariable problems -ErrorAction SilentlyContinue
        $out | Should -BeNullOrEmpty
        $problems[0].FullyQualifiedErrorId | Should -Be 'NbdUriInvalid,NbdPowerShell.Commands.FindNbdExportCommand'
        $problems[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
    }

    It 'writes NbdConnectionFailed when nothing listens' {
        { Find-NbdExport -ComputerName 127.0.0.1 -Port (Get-FreeTcpPort) -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdConnectionFailed,NbdPowerShell.Commands.FindNbdExportCommand'
    }

    It 'writes NbdHandshakeFailed when the peer is not an NBD server' {
        $listener = [System.Net.Sockets.TcpListener]::new([ipaddress]::Loopback, 0)
        $listener.Start()
        $accept = $listener.AcceptTcpClientAsync()
        try {
            $job = Start-BackgroundRunspace -ScriptBlock { param($t) $c = $t.GetAwaiter().GetResult(); $s = $c.GetStream(); $b = [Text.Encoding]::ASCII.GetBytes("SSH-2.0-OpenSSH_9.2`r`n" + ('x' * 200)); $s.Write($b, 0, $b.Length); Start-Sleep 2; $c.Close() } -ArgumentList $accept
            { Find-NbdExport -ComputerName 127.0.0.1 -Port $listener.LocalEndpoint.Port -Timeout 10 -ErrorAction Stop } |
                Should -Throw -ErrorId 'NbdHandshakeFailed,NbdPowerShell.Commands.FindNbdExportCommand'
        }
        finally { $listener.Stop(); Stop-BackgroundRunspace $job }
    }
}

# -Driver Nbd: the nbd path negotiates in this process before it needs the driver (Auto would go to FUSE through the
# service on a machine without nbd; NbdFuse.Tests.ps1 covers that path).
Describe 'Connect-NbdDevice errors before the kernel is involved' -Skip:(-not $IsLinux) {
    BeforeAll { $script:e = Start-NbdExport -Memory -Size 1MB -Name conn -Port 0 }
    AfterAll { Stop-AllTestExports }

    It 'writes NbdConnectionFailed when nothing listens' {
        { Connect-NbdDevice -ComputerName 127.0.0.1 -Port (Get-FreeTcpPort) -ExportName x -Driver Nbd -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdConnectionFailed,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'writes NbdExportNameUnknown for an export the server does not have' {
        { Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName nope -Driver Nbd -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdExportNameUnknown,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'writes NbdUriInvalid for a -Uri that is not an NBD URI' {
        { Connect-NbdDevice -Uri 'nbd:/broken' -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdUriInvalid,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'refuses several -Uri without -ReadOnly before anything is attached or started' {
        { Connect-NbdDevice -Uri 'nbd://127.0.0.1:1/a', 'nbd://127.0.0.2:1/a' -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'refuses several -Uri with -Driver Fuse (failover swaps the kernel sockets of an nbd device), naming the driver' {
        { Connect-NbdDevice -Uri 'nbd://127.0.0.1:1/a', 'nbd://127.0.0.2:1/a' -ReadOnly -Driver Fuse -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.ConnectNbdDeviceCommand' -ExpectedMessage '*nbd driver*'
        Get-NbdSession | Where-Object Uri -like 'nbd://127.0.0.*:1/a' | Should -BeNullOrEmpty
    }

    It 'refuses several -ComputerName without -ReadOnly, like several -Uri' {
        { Connect-NbdDevice -ComputerName 127.0.0.1, 127.0.0.2 -Port 1 -ExportName a -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.ConnectNbdDeviceCommand' -ExpectedMessage '*-ComputerName*-ReadOnly*'
    }

    It 'refuses several -ComputerName with -Driver Fuse, naming the driver' {
        { Connect-NbdDevice -ComputerName 127.0.0.1, 127.0.0.2 -Port 1 -ExportName a -ReadOnly -Driver Fuse -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.ConnectNbdDeviceCommand' -ExpectedMessage '*nbd driver*'
        Get-NbdSession | Where-Object Uri -like 'nbd://127.0.0.*:1/a' | Should -BeNullOrEmpty
    }

    It 'attaches nothing with -WhatIf' {
        $e | Connect-NbdDevice -WhatIf | Should -BeNullOrEmpty
        (Get-NbdExport -Name conn).ClientCount | Should -Be 0
    }

    It 'rejects a -Device that is not an nbd device' {
        { Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName conn -Device /dev/sda -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'writes NbdPermissionDenied when not root' -Skip:($NbdTest.IsRoot) {
        { $e | Connect-NbdDevice -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdPermissionDenied,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }
}

Describe 'Sessions and devices without attached devices' -Skip:(-not $IsLinux) {
    It 'Get-NbdSession writes NbdDeviceNotFound for a device that does not exist' {
        { Get-NbdSession -Device /dev/nbd9999 -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdDeviceNotFound,NbdPowerShell.Commands.GetNbdSessionCommand'
    }

    It 'Get-NbdSession is silent for a wildcard that matches nothing' {
        $err = $null
        Get-NbdSession -Device '/dev/nbd9999*' -ErrorVariable err | Should -BeNullOrEmpty
        $err | Should -BeNullOrEmpty
    }

    It 'Disconnect-NbdDevice writes NbdDeviceNotFound for a device that does not exist' {
        { Disconnect-NbdDevice -Device /dev/nbd9999 -Confirm:$false -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdDeviceNotFound,NbdPowerShell.Commands.DisconnectNbdDeviceCommand'
    }

    It 'Disconnect-NbdDevice binds device strings by value' {
        $err = $null
        '/dev/nbd9998', '/dev/nbd9999' | Disconnect-NbdDevice -Confirm:$false -ErrorVariable err -ErrorAction SilentlyContinue
        $err | Should -HaveCount 2
        $err.TargetObject | Should -Be @('/dev/nbd9998', '/dev/nbd9999')
    }

    It 'Get-NbdDevice lists device nodes with their state' {
        $devices = @(Get-NbdDevice -WarningAction SilentlyContinue)
        if ($NbdTest.HasNbd) {
            $devices.Count | Should -BeGreaterThan 0
            $devices[0].State | Should -BeIn 'Free', 'Connected'
        }
        else {
            $devices | Should -BeNullOrEmpty
        }
    }
}

Describe 'Kernel cmdlets on other systems' -Skip:($IsLinux) {
    It 'Connect-NbdDevice throws NbdPlatformNotSupported' {
        { Connect-NbdDevice -ComputerName localhost -ExportName x -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdPlatformNotSupported,NbdPowerShell.Commands.ConnectNbdDeviceCommand'
    }

    It 'Find-NbdExport throws NbdPlatformNotSupported' {
        { Find-NbdExport -ComputerName localhost -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdPlatformNotSupported,NbdPowerShell.Commands.FindNbdExportCommand'
    }
}
