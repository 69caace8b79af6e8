. (Join-Path $PSScriptRoot 'common.ps1')

Describe 'Start-NbdExport' {
    AfterEach { Stop-AllTestExports }

    It 'serves a memory export on a free port and reports the port' {
        $e = Start-NbdExport -Memory -Size 16MB -Name mem1 -Port 0
        $e | Should -BeOfType NbdPowerShell.NbdExport
        $e.Port | Should -BeGreaterThan 0
        $e.Size | Should -Be 16MB
        $e.Name | Should -Be 'mem1'
        $e.Uri | Should -Be "nbd://127.0.0.1:$($e.Port)/mem1"
        $e.State | Should -Be 'Running'
    }

    It 'names a memory export "memory" by default' {
        (Start-NbdExport -Memory -Size 1MB -Port 0).Name | Should -Be 'memory'
    }

    It 'binds FullName from Get-Item and names the export after the file' {
        $file = Join-Path $TestDrive 'disk-a.img'
        [IO.File]::WriteAllBytes($file, [byte[]]::new(1MB))
        $e = Get-Item $file | Start-NbdExport -Port 0
        $e.Name | Should -Be 'disk-a'
        $e.Path | Should -Be $file
        $e.Size | Should -Be 1MB
    }

    It 'serves every piped file, all on one shared listener' {
        $first = Start-NbdExport -Memory -Size 1MB -Name seed -Port 0
        foreach ($n in 'x1', 'x2') { [IO.File]::WriteAllBytes((Join-Path $TestDrive "$n.img"), [byte[]]::new(64KB)) }
        $exports = Get-ChildItem (Join-Path $TestDrive 'x*.img') | Start-NbdExport -Port $first.Port -ReadOnly
        $exports.Name | Should -Be @('x1', 'x2')
        $exports.Port | Sort-Object -Unique | Should -Be $first.Port
        (Find-NbdExport -ComputerName 127.0.0.1 -Port $first.Port).Name | Sort-Object | Should -Be @('seed', 'x1', 'x2')
    }

    It 'does nothing with -WhatIf' {
        Start-NbdExport -Memory -Size 1MB -Name whatif -Port 0 -WhatIf
        Get-NbdExport -Name whatif* | Should -BeNullOrEmpty
    }

    It 'returns the existing export for the same command, changing nothing' {
        $first = Start-NbdExport -Memory -Size 1MB -Name dup -Port 0
        $first.Changed | Should -BeTrue
        $verbose = Start-NbdExport -Memory -Size 1MB -Name dup -Port 0 -Verbose 4>&1
        $again = $verbose | Where-Object { $_ -is [NbdPowerShell.NbdExport] }
        $again.Changed | Should -BeFalse
        $again.Port | Should -Be $first.Port
        (($verbose | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }).Message -join "`n") | Should -Match 'nothing changed'
    }

    It 'refuses the same name with another definition with NbdExportAlreadyExists, and -Force replaces it' {
        $null = Start-NbdExport -Memory -Size 1MB -Name dup2 -Port 0
        { Start-NbdExport -Memory -Size 2MB -Name dup2 -Port 0 -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdExportAlreadyExists,NbdPowerShell.Commands.StartNbdExportCommand'
        (Get-NbdExport -Name dup2).Size | Should -Be 1MB
        $replaced = Start-NbdExport -Memory -Size 2MB -Name dup2 -Port 0 -Force
        $replaced.Changed | Should -BeTrue
        (Get-NbdExport -Name dup2).Size | Should -Be 2MB
    }

    It 'serves one export on IPv4, IPv6 and a Unix socket at once' {
        $sock = Join-Path $TestDrive 'dual.sock'
        $e = Start-NbdExport -Memory -Size 1MB -Name dual -ListenAddress 127.0.0.1, ::1 -Port 0 -SocketPath $sock
        $e.Listeners | Should -Be @("127.0.0.1:$($e.Port)", "[::1]:$($e.Port)", $sock)
        (Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port).Name | Should -Be 'dual'
        (Find-NbdExport -ComputerName ::1 -Port $e.Port).Name | Should -Be 'dual'
        (Find-NbdExport -SocketPath $sock).Name | Should -Be 'dual'
    }

    It 'reports a missing file with NbdPathNotFound' {
        { Start-NbdExport -Path (Join-Path $TestDrive 'nope.img') -Port 0 -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdPathNotFound,NbdPowerShell.Commands.StartNbdExportCommand'
    }

    It 'reports a busy port with NbdAddressInUse' {
        $blocker = [System.Net.Sockets.TcpListener]::new([ipaddress]::Loopback, 0)
        $blocker.Start()
        try {
            $err = $null
            Start-NbdExport -Memory -Size 1MB -Name busyport -Port $blocker.LocalEndpoint.Port -ErrorVariable err -ErrorAction SilentlyContinue
            $err[0].FullyQualifiedErrorId | Should -Be 'NbdAddressInUse,NbdPowerShell.Commands.StartNbdExportCommand'
            $err[0].CategoryInfo.Category | Should -Be 'ResourceUnavailable'
            $err[0].ErrorDetails.RecommendedAction | Should -Match 'Port'
        }
        finally { $blocker.Stop() }
    }

    It 'serves on a Unix socket with -SocketPath' {
        $sock = Join-Path $TestDrive 'nbd.sock'
        $e = Start-NbdExport -Memory -Size 2MB -Name unix1 -SocketPath $sock
        $e.SocketPath | Should -Be $sock
        $e.Uri | Should -BeLike 'nbd+unix:///unix1?socket=*'
        (Find-NbdExport -SocketPath $sock).Name | Should -Be 'unix1'
    }

    It 'hides the export from clients outside -AllowedClient' {
        $e = Start-NbdExport -Memory -Size 1MB -Name private -Port 0 -AllowedClient 10.0.0.0/8
        Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port | Should -BeNullOrEmpty
    }

    It 'agrees with nbdinfo --json' -Skip:(-not $NbdTest.HasNbdInfo) {
        $e = Start-NbdExport -Memory -Size 8MB -Name info1 -Port 0 -Description 'for nbdinfo'
        $json = nbdinfo --json $e.Uri | ConvertFrom-Json
        $json.exports[0].'export-size' | Should -Be 8MB
        $json.exports[0].description | Should -Be 'for nbdinfo'
    }
}

Describe 'Get-NbdExport' {
    BeforeAll {
        $null = Start-NbdExport -Memory -Size 1MB -Name get-a -Port 0
        $null = Start-NbdExport -Memory -Size 1MB -Name get-b -Port 0
    }
    AfterAll { Stop-AllTestExports }

    It 'lists every export' {
        (Get-NbdExport).Name | Should -Contain 'get-a'
        (Get-NbdExport).Name | Should -Contain 'get-b'
    }

    It 'filters with wildcards, case-insensitively' {
        (Get-NbdExport -Name 'GET-*').Name | Should -Be @('get-a', 'get-b')
    }

    It 'writes NbdExportNotFound for a missing exact name' {
        { Get-NbdExport -Name no-such -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdExportNotFound,NbdPowerShell.Commands.GetNbdExportCommand'
    }

    It 'is silent when a wildcard matches nothing' {
        $err = $null
        Get-NbdExport -Name 'zzz*' -ErrorVariable err | Should -BeNullOrEmpty
        $err | Should -BeNullOrEmpty
    }
}

Describe 'Stop-NbdExport' {
    AfterEach { Stop-AllTestExports }

    It 'stops by name and frees the port' {
        $e = Start-NbdExport -Memory -Size 1MB -Name stop1 -Port 0
        Stop-NbdExport -Name stop1 -Confirm:$false
        Get-NbdExport -Name stop1* | Should -BeNullOrEmpty
        $probe = [System.Net.Sockets.TcpListener]::new([ipaddress]::Loopback, $e.Port)
        { $probe.Start() } | Should -Not -Throw
        $probe.Stop()
    }

    It 'stops piped exports and writes them with -PassThru' {
        $null = Start-NbdExport -Memory -Size 1MB -Name pipe1 -Port 0
        $stopped = Get-NbdExport -Name pipe1 | Stop-NbdExport -PassThru -Confirm:$false
        $stopped.Name | Should -Be 'pipe1'
        $stopped.State | Should -Be 'Stopped'
    }

    It 'stops nothing with -WhatIf' {
        $null = Start-NbdExport -Memory -Size 1MB -Name keep -Port 0
        Get-NbdExport -Name keep | Stop-NbdExport -WhatIf
        (Get-NbdExport -Name keep).State | Should -Be 'Running'
    }

    It 'binds Name by property name from other objects' {
        $null = Start-NbdExport -Memory -Size 1MB -Name byprop -Port 0
        [pscustomobject]@{ Name = 'byprop' } | Stop-NbdExport -Confirm:$false
        Get-NbdExport -Name byprop* | Should -BeNullOrEmpty
    }

    It 'writes NbdExportNotFound for an unknown name' {
        { Stop-NbdExport -Name ghost -Confirm:$false -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdExportNotFound,NbdPowerShell.Commands.StopNbdExportCommand'
    }

    It 'refuses while a client is connected unless -Force' {
        $e = Start-NbdExport -Memory -Size 1MB -Name busy -Port 0
        $client = Connect-RawNbdClient -Port $e.Port -Name busy
        try {
            $deadline = [DateTime]::UtcNow.AddSeconds(10)
            while ((Get-NbdExport -Name busy).ClientCount -lt 1 -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 50 }
            (Get-NbdExport -Name busy).ClientCount | Should -Be 1
            { Stop-NbdExport -Name busy -Confirm:$false -ErrorAction Stop } |
                Should -Throw -ErrorId 'NbdExportBusy,NbdPowerShell.Commands.StopNbdExportCommand'
            Stop-NbdExport -Name busy -Force -Confirm:$false
            Get-NbdExport -Name busy* | Should -BeNullOrEmpty
        }
        finally { $client.Dispose() }
    }
}

Describe 'Wait-NbdExport' {
    AfterEach { Stop-AllTestExports }

    It 'returns once another runspace stops the export' {
        $null = Start-NbdExport -Memory -Size 1MB -Name waited -Port 0
        $job = Start-BackgroundRunspace -ScriptBlock {
            param($ModulePath)
            Import-Module $ModulePath
            Start-Sleep -Milliseconds 500
            Stop-NbdExport -Name waited -Force -Confirm:$false
        } -ArgumentList $NbdModulePath
        try {
            $stopped = Wait-NbdExport -Name waited -Timeout 30 -PassThru -ErrorAction Stop
            $stopped.State | Should -Be 'Stopped'
        }
        finally { Stop-BackgroundRunspace $job }
    }

    It 'writes NbdTimeout when the exports outlive -Timeout' {
        $null = Start-NbdExport -Memory -Size 1MB -Name long -Port 0
        { Wait-NbdExport -Name long -Timeout 1 -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdTimeout,NbdPowerShell.Commands.WaitNbdExportCommand'
    }
}
