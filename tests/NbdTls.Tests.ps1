. (Join-Path $PSScriptRoot 'common.ps1')

# TLS with certificates made here by openssl (never committed): a CA, and a server certificate for localhost/127.0.0.1.
BeforeDiscovery { $script:HasOpenssl = [bool](Get-Command openssl -ErrorAction Ignore) }

BeforeAll {
    $script:pki = Join-Path ([IO.Path]::GetTempPath()) "nbdps-pester-tls-$PID"
    New-TestPki $pki
    $script:ca = Join-Path $pki 'ca-cert.pem'
    $script:cert = Join-Path $pki 'server-cert.pem'
    $script:key = Join-Path $pki 'server-key.pem'
}
AfterAll { Remove-Item -Recurse -Force $pki -ErrorAction SilentlyContinue }

Describe 'TLS exports and clients' -Skip:(-not ($IsLinux -and $HasOpenssl)) {
    BeforeAll {
        $script:e = Start-NbdExport -Memory -Size 2MB -Name tls-disk -Port 0 -CertificatePath $cert -KeyPath $key -Description 'secure'
    }
    AfterAll { Stop-AllTestExports }

    It 'serves with TlsMode Require and an nbds:// Uri, showing the certificate but no key' {
        $e.TlsMode | Should -Be 'Require'
        $e.Uri | Should -Be "nbds://127.0.0.1:$($e.Port)/tls-disk"
        $e.CertificateSubject | Should -Be 'CN=localhost'
        ($e | Out-String) | Should -Not -Match 'PRIVATE KEY'
        $e.PSObject.Properties.Name | Should -Not -Contain 'Certificate'
    }

    It 'Find-NbdExport -UseTls -CertificateAuthority lists it' {
        $list = Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port -UseTls -CertificateAuthority $ca
        $list.Name | Should -Be 'tls-disk'
        $list.Size | Should -Be 2MB
        $list.Description | Should -Be 'secure'
        $list.IsTls | Should -BeTrue
        $list.Uri | Should -Be "nbds://127.0.0.1:$($e.Port)/tls-disk"
    }

    It 'a plain Find-NbdExport fails with NbdTlsRequired' {
        { Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdTlsRequired,NbdPowerShell.Commands.FindNbdExportCommand'
    }

    It 'an untrusted certificate fails with NbdCertificateInvalid, and -SkipCertificateCheck opts out' {
        $err = $null
        Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port -UseTls -ErrorAction SilentlyContinue -ErrorVariable err
        $err[0].FullyQualifiedErrorId | Should -BeLike 'NbdCertificateInvalid,*'
        $err[0].CategoryInfo.Category | Should -Be 'SecurityError'
        $err[0].ErrorDetails.RecommendedAction | Should -Match 'CertificateAuthority'
        (Find-NbdExport -ComputerName 127.0.0.1 -Port $e.Port -SkipCertificateCheck).Name | Should -Be 'tls-disk'
    }

    It 'TLS against a plain server fails with NbdTlsNotSupported' {
        $plain = Start-NbdExport -Memory -Size 1MB -Name tls-plain -Port 0
        { Find-NbdExport -ComputerName 127.0.0.1 -Port $plain.Port -UseTls -CertificateAuthority $ca -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdTlsNotSupported,NbdPowerShell.Commands.FindNbdExportCommand'
    }

    It 'refuses -TlsMode Require without a certificate and mixed TLS settings on one listener' {
        { Start-NbdExport -Memory -Size 1MB -Name tls-nocert -Port 0 -TlsMode Require -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.StartNbdExportCommand'
        { Start-NbdExport -Memory -Size 1MB -Name tls-mixed -Port $e.Port -ErrorAction Stop } |
            Should -Throw -ErrorId 'NbdInvalidArgument,NbdPowerShell.Commands.StartNbdExportCommand'
    }

    It 'a -TlsOnly export is hidden from plain clients under TlsMode Allow' {
        $open = Start-NbdExport -Memory -Size 1MB -Name tls-open -Port 0 -CertificatePath $cert -KeyPath $key -TlsMode Allow
        $null = Start-NbdExport -Memory -Size 1MB -Name tls-only -Port $open.Port -CertificatePath $cert -KeyPath $key -TlsMode Allow -TlsOnly
        (Find-NbdExport -ComputerName 127.0.0.1 -Port $open.Port).Name | Should -Be 'tls-open'
        (Find-NbdExport -ComputerName 127.0.0.1 -Port $open.Port -UseTls -CertificateAuthority $ca).Name | Sort-Object | Should -Be @('tls-only', 'tls-open')
    }

    It 'nbdinfo reaches it with nbds:// and tls-certificates=' -Skip:(-not $NbdTest.HasNbdInfo) {
        $out = nbdinfo --json "nbds://127.0.0.1:$($e.Port)/tls-disk?tls-certificates=$pki" | ConvertFrom-Json
        $LASTEXITCODE | Should -Be 0
        $out.TLS | Should -BeTrue
        $out.exports[0].'export-size' | Should -Be 2MB
    }
}

Describe 'Kernel attach over TLS' -Tag 'Kernel' -Skip:(-not ($NbdTest.KernelReady -and $HasOpenssl)) {
    AfterEach {
        Get-NbdSession | Where-Object { $_.Scope } | Disconnect-NbdDevice -Force -Confirm:$false -ErrorAction SilentlyContinue
        Stop-AllTestExports
    }
    # The relays run in the service (on this run's private directories): stop it when done.
    AfterAll {
        Stop-NbdService -Confirm:$false -ErrorAction SilentlyContinue
        Stop-TestServiceProcess $env:NBDPOWERSHELL_RUNTIME_DIR
    }

    It 'attaches a TLS export through a relay in the service, writes, reads back and disconnects' {
        $e = Start-NbdExport -Memory -Size 16MB -Name ktls -Port 0 -CertificatePath $cert -KeyPath $key
        $s = Connect-NbdDevice -ComputerName 127.0.0.1 -Port $e.Port -ExportName ktls -UseTls -CertificateAuthority $ca -Timeout 120
        $s.IsTls | Should -BeTrue
        $s.IsTlsRelayed | Should -BeTrue
        $s.Scope | Should -Be 'Service'
        $s.Transport | Should -Be "TLS relay (NbdPowerShell service, pid $((Get-NbdService).ProcessId))"
        $s.BackendIdentifier | Should -Be "nbds://127.0.0.1:$($e.Port)/ktls"

        $data = [byte[]]::new(4MB); [Random]::new(7).NextBytes($data)
        $fs = [IO.FileStream]::new($s.Device, 'Open', 'ReadWrite', 'ReadWrite', 1, [IO.FileOptions]::WriteThrough)
        try { $fs.Write($data, 0, $data.Length); $fs.Flush($true) } finally { $fs.Dispose() }
        # Set-Content opens with truncation, which /proc refuses; the shell's redirect does not.
        sh -c 'echo 3 > /proc/sys/vm/drop_caches'
        $back = [byte[]]::new($data.Length)
        $fs = [IO.File]::OpenRead($s.Device)
        try { $fs.ReadExactly($back, 0, $back.Length) } finally { $fs.Dispose() }
        [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($back)) | Should -Be ([Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($data)))

        $listed = Get-NbdSession -Device $s.Device
        $listed.IsTlsRelayed | Should -BeTrue
        $listed.Counters.BytesToServer | Should -BeGreaterThan 4MB
        $s | Disconnect-NbdDevice -Confirm:$false
        Get-NbdSession -Device "$($s.Device)*" | Should -BeNullOrEmpty
    }

    It 'attaches a TLS export of this process from the pipeline over a local socket pair, without TLS' {
        $s = Start-NbdExport -Memory -Size 8MB -Name ktls-local -Port 0 -CertificatePath $cert -KeyPath $key | Connect-NbdDevice -Timeout 120
        $s.IsTlsRelayed | Should -BeFalse
        $s.Scope | Should -Be 'Process'
        $s.Transport | Should -Be 'Local socket pair (this process)'
        $s.Uri | Should -BeLike 'nbds://*/ktls-local'
        $s.Size | Should -Be 8MB
        $s | Disconnect-NbdDevice -Confirm:$false
    }

    It 'keeps a persistent TLS device working after the attaching pwsh exits' {
        $e = Start-NbdExport -Memory -Size 16MB -Name ktls-kept -Port 0 -CertificatePath $cert -KeyPath $key -Persistent
        $step = Invoke-PwshStep "Connect-NbdDevice -ComputerName 127.0.0.1 -Port $($e.Port) -ExportName ktls-kept -UseTls -CertificateAuthority '$ca' -Persistent -Timeout 120 | ConvertTo-Json -Compress -Depth 4" -TimeoutSeconds 1200
        $step.ExitCode | Should -Be 0 -Because $step.Errors
        $device = $step.Json.Device
        $step.Json.Scope | Should -Be 'Service'
        $step.Json.IsPersistent | Should -BeTrue
        # The pwsh that attached it has exited: the relay lives in the service.
        $data = [byte[]]::new(2MB); [Random]::new(11).NextBytes($data)
        $fs = [IO.FileStream]::new($device, 'Open', 'ReadWrite', 'ReadWrite', 1, [IO.FileOptions]::WriteThrough)
        try { $fs.Write($data, 0, $data.Length); $fs.Flush($true) } finally { $fs.Dispose() }
        sh -c 'echo 3 > /proc/sys/vm/drop_caches'
        $back = [byte[]]::new($data.Length)
        $fs = [IO.File]::OpenRead($device)
        try { $fs.ReadExactly($back, 0, $back.Length) } finally { $fs.Dispose() }
        [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($back)) | Should -Be ([Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($data)))
        $listed = Get-NbdSession -Device $device
        $listed.State | Should -Be 'Connected'
        $listed.Transport | Should -BeLike 'TLS relay (NbdPowerShell service, pid *)'
        $listed.History.Event | Should -Contain 'Attached'
        Disconnect-NbdDevice -Device $device -Confirm:$false
        Get-NbdSession -Device "$device*" | Should -BeNullOrEmpty
    }
}
