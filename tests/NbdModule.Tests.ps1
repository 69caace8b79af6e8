. (Join-Path $PSScriptRoot 'common.ps1')

Describe 'Tab completion' {
    BeforeAll {
        $script:e = Start-NbdExport -Memory -Size 1MB -Name 'complete-me' -Port 0
        $null = Start-NbdExport -Memory -Size 1MB -Name 'complete with space' -Port $script:e.Port
    }
    AfterAll { Stop-AllTestExports }

    It 'completes -Name of Get-NbdExport with the served exports' {
        (Complete 'Get-NbdExport -Name complete-').CompletionText | Should -Contain 'complete-me'
    }

    It 'quotes names with spaces' {
        (Complete 'Stop-NbdExport -Name complete').CompletionText | Should -Contain "'complete with space'"
    }

    It 'completes -ExportName by asking the server given by -ComputerName and -Port' -Skip:(-not $IsLinux) {
        $found = Complete "Connect-NbdDevice -ComputerName 127.0.0.1 -Port $($e.Port) -ExportName comp"
        $found.CompletionText | Should -Contain 'complete-me'
    }

    It 'completes -Device with nbd devices' -Skip:(-not $NbdTest.HasNbd) {
        (Complete 'Get-NbdDevice -Device /dev/nbd').CompletionText | Should -Not -BeNullOrEmpty
    }
}

Describe 'Formatting' {
    BeforeAll { $script:e = Start-NbdExport -Memory -Size 1GB -Name 'format-test' -Port 0 }
    AfterAll { Stop-AllTestExports }

    It 'has a table view for every output type' {
        foreach ($t in 'NbdExport', 'NbdSession', 'NbdRemoteExport', 'NbdDevice', 'NbdService') {
            Get-FormatData -TypeName "NbdPowerShell.$t" | Should -Not -BeNullOrEmpty
        }
    }

    It 'shows exports in a table that fits 80 columns' {
        $text = Get-NbdExport -Name format-test | Format-Table | Out-String -Width 80
        $text | Should -Match 'Name\s+Scope\s+Size\s+ReadOnly\s+Clients\s+State\s+Uri'
        $text | Should -Match 'format-test\s+Process\s+1 GB\s+False\s+0\s+Running'
        ($text -split "`n" | Measure-Object -Property Length -Maximum).Maximum | Should -BeLessOrEqual 80
    }

    It 'shows remote exports in a table that fits 80 columns' -Skip:(-not $IsLinux) {
        $text = Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port | Format-Table | Out-String -Width 80
        $text | Should -Match 'format-test\s+1 GB'
        ($text -split "`n" | Measure-Object -Property Length -Maximum).Maximum | Should -BeLessOrEqual 80
    }
}

Describe 'Help' {
    It 'shows the full help of every cmdlet with examples' {
        foreach ($name in (Get-Command -Module NbdPowerShell).Name) {
            $help = Get-Help $name -Full
            $help.Synopsis | Should -Not -BeLike "$name*" -Because "$name needs a synopsis from the MAML file"
            @($help.Examples.Example).Count | Should -BeGreaterOrEqual 2
        }
    }

    It 'documents every parameter of Connect-NbdDevice' {
        $help = Get-Help Connect-NbdDevice -Full
        $documented = $help.Parameters.Parameter.Name
        foreach ($p in 'ComputerName', 'Port', 'ExportName', 'SocketPath', 'InputObject', 'Device', 'ReadOnly', 'BlockSize', 'Timeout', 'DeadConnectionTimeout', 'Connections') {
            $documented | Should -Contain $p
        }
    }

    It 'has the about topic' {
        Get-Help about_NbdPowerShell | Out-String | Should -Match 'Start-NbdExport -Persistent hands the export to the NbdPowerShell service'
    }
}

Describe 'Errors' {
    It 'gives every catalogue id a category and a recommended action, and unclassified failures their own id' {
        $assembly = [NbdPowerShell.ModuleLifetime].Assembly
        $records = $assembly.GetType('NbdPowerShell.ErrorRecords')
        foreach ($id in [NbdPowerShell.Engine.Hosting.ErrorIds]::All | Where-Object { $_ -ne 'NbdUnexpectedError' }) {
            $records.GetMethod('CategoryOf').Invoke($null, @([string]$id)) | Should -Not -Be 'NotSpecified' -Because $id
            $records.GetMethod('RecommendedActionOf').Invoke($null, @([string]$id)) | Should -Not -BeNullOrEmpty -Because $id
        }
        $record = $records.GetMethod('From').Invoke($null, @([InvalidOperationException]::new('a bug'), $null))
        $record.FullyQualifiedErrorId | Should -Be 'NbdUnexpectedError'
    }
}

Describe 'Module' {
    It 'exports exactly the manifest cmdlets' {
        (Get-Command -Module NbdPowerShell).Name | Sort-Object | Should -Be @(
            'Connect-NbdDevice', 'Copy-NbdDisk', 'Disconnect-NbdDevice', 'Find-NbdExport', 'Get-NbdDevice',
            'Get-NbdDiskHash', 'Get-NbdExport', 'Get-NbdService', 'Get-NbdSession', 'Install-NbdService', 'Start-NbdExport',
            'Start-NbdService', 'Stop-NbdExport', 'Stop-NbdService', 'Uninstall-NbdService', 'Wait-NbdExport')
    }

    It 'stops the exports of this process when removed' {
        $e = Start-NbdExport -Memory -Size 1MB -Name removal -Port 0
        Remove-Module NbdPowerShell
        try {
            $probe = [System.Net.Sockets.TcpListener]::new([ipaddress]::Loopback, $e.Port)
            { $probe.Start() } | Should -Not -Throw
            $probe.Stop()
        }
        finally { Import-Module $NbdModulePath -Force }
        Get-NbdExport | Should -BeNullOrEmpty
    }

    It 'writes engine messages as Verbose on the cmdlet thread' {
        $verbose = Start-NbdExport -Memory -Size 1MB -Name chatty -Port 0 -Verbose 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
        ($verbose.Message -join "`n") | Should -Match "chatty"
        Stop-AllTestExports
    }
}
