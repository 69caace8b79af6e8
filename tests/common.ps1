# Dot-sourced at the top of every *.Tests.ps1 (so it also runs during Pester's Discovery phase).
# Imports the BUILT module from out/NbdPowerShell and defines shared helpers.
# NBD_TEST_MODULE names another built copy (tools/test.sh gives the kernel part a snapshot, because the package
# test rebuilds out/NbdPowerShell while that part runs).
$global:NbdModulePath = if ($env:NBD_TEST_MODULE) { $env:NBD_TEST_MODULE } else {
    [IO.Path]::GetFullPath([IO.Path]::Combine($PSScriptRoot, '..', 'out', 'NbdPowerShell', 'NbdPowerShell.psd1'))
}
if (-not (Get-Module NbdPowerShell)) {
    Import-Module $global:NbdModulePath -Force -ErrorAction Stop
}

# No test may touch the real service (/run/nbdpowershell, /etc/nbdpowershell): every test process gets private
# locations. Tests that start the service point these at their own directories and stop it when done.
if (-not $env:NBDPOWERSHELL_TEST_PRIVATE) {
    $env:NBDPOWERSHELL_TEST_PRIVATE = [IO.Path]::Combine([IO.Path]::GetTempPath(), "nbdps-pester-$PID")
    $env:NBDPOWERSHELL_RUNTIME_DIR = [IO.Path]::Combine($env:NBDPOWERSHELL_TEST_PRIVATE, 'run')
    $env:NBDPOWERSHELL_CONFIG_DIR = [IO.Path]::Combine($env:NBDPOWERSHELL_TEST_PRIVATE, 'etc')
}

$global:NbdTest = @{
    IsRoot      = $IsLinux -and ((id -u) -eq '0')
    HasNbd      = $IsLinux -and (Test-Path /sys/module/nbd)
    HasNbdInfo  = [bool](Get-Command nbdinfo -ErrorAction Ignore)
    HasMkfsExt4 = [bool](Get-Command mkfs.ext4 -ErrorAction Ignore)
}
$global:NbdTest.KernelReady = $global:NbdTest.IsRoot -and $global:NbdTest.HasNbd

# Completion results for the text of a command line, cursor at its end (what Tab would offer).
function global:Complete([string]$Line) {
    (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches
}

# A TCP port that nothing listens on right now.
function global:Get-FreeTcpPort {
    $l = [System.Net.Sockets.TcpListener]::new([ipaddress]::Loopback, 0)
    $l.Start()
    try { $l.LocalEndpoint.Port } finally { $l.Stop() }
}

# An NBD client connection in transmission (the engine client), to make an export "busy".
function global:Connect-RawNbdClient([int]$Port, [string]$Name) {
    [NbdPowerShell.Engine.Client.NbdClient]::ConnectAsync('127.0.0.1', $Port, $Name, $null, [Threading.CancellationToken]::None).GetAwaiter().GetResult()
}

function global:Stop-AllTestExports {
    Get-NbdExport | Stop-NbdExport -Force -Confirm:$false -ErrorAction SilentlyContinue
}

# Kills the processes whose command line names a test's private directory: the service a test started there (its
# command line holds the runtime directory), when Stop-NbdService could not stop it because a test failed or it hung.
# Found by that unique directory, never by a process name, so nothing another test run started is touched.
function global:Stop-TestServiceProcess([string]$Directory) {
    foreach ($entry in [IO.Directory]::GetDirectories('/proc')) {
        $id = 0
        if (-not [int]::TryParse([IO.Path]::GetFileName($entry), [ref]$id) -or $id -eq $PID) { continue }
        $commandLine = try { [IO.File]::ReadAllText("$entry/cmdline") } catch { '' }
        if ($commandLine.Contains($Directory)) { Stop-Process -Id $id -Force -ErrorAction Ignore }
    }
}

# Runs a script block in another runspace of this process (like Start-ThreadJob, which a source-built pwsh
# may lack). Returns the PowerShell instance; call .EndInvoke($handle) or .Dispose() on it when done.
function global:Start-BackgroundRunspace([scriptblock]$ScriptBlock, [object[]]$ArgumentList) {
    $ps = [powershell]::Create()
    $null = $ps.AddScript($ScriptBlock.ToString())
    foreach ($a in $ArgumentList) { $null = $ps.AddArgument($a) }
    [pscustomobject]@{ PowerShell = $ps; Handle = $ps.BeginInvoke() }
}

function global:Stop-BackgroundRunspace($Background) {
    if (-not $Background) { return }
    $null = $Background.Handle.AsyncWaitHandle.WaitOne(30000)
    $Background.PowerShell.Dispose()
}

# Starting another pwsh from a test. pwsh may run as a .NET tool: then [Environment]::ProcessPath is dotnet, the
# first command-line argument is pwsh.dll, and (Get-Process -Id $PID).Path is dotnet too. The tool's `pwsh` shim
# forks the real pwsh, so a kill of the shim leaves PowerShell running. Starting exactly what runs this process
# gives a child that a kill stops.

# Makes a test CA and a server certificate for localhost/127.0.0.1 with openssl in Dir (created if missing):
# ca-cert.pem, server-cert.pem, server-key.pem. Never committed; throws when openssl made nothing.
function global:New-TestPki([string]$Dir) {
    $null = New-Item -ItemType Directory -Force $Dir
    Push-Location $Dir
    try {
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 1 -subj '/CN=NbdPowerShell Pester CA' `
            -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>$null
        openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj '/CN=localhost' 2>$null
        Set-Content server.ext "subjectAltName=DNS:localhost,IP:127.0.0.1`nextendedKeyUsage=serverAuth`nbasicConstraints=CA:FALSE"
        openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 1 -extfile server.ext 2>$null
        if (-not (Test-Path server-cert.pem)) { throw 'openssl did not make the test certificates' }
    }
    finally { Pop-Location; $global:LASTEXITCODE = 0 }
}

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

# One step of a multi-process scenario: runs a script in a new pwsh with the built module imported (and this
# process's environment, so the same service locations), waits for it (killing it after -TimeoutSeconds) and returns
# ExitCode, Output, Errors and, when the script's last output line is JSON, Json. -Prefix runs the pwsh through
# another program (setpriv to run it as another user).
function global:Invoke-PwshStep([string]$Script, [int]$TimeoutSeconds = 300, [string[]]$Prefix = @()) {
    # Get-PwshCommand emits its command as one array (unrolled here by the parentheses, not nested by @()).
    $command = @($Prefix) + (Get-PwshCommand)
    $start = [Diagnostics.ProcessStartInfo]::new($command[0])
    foreach ($a in @($command | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive', '-Command', "`$ErrorActionPreference = 'Stop'; `$ProgressPreference = 'SilentlyContinue'; Import-Module '$NbdModulePath'; $Script")) {
        $start.ArgumentList.Add($a)
    }
    $start.RedirectStandardOutput = $true
    $start.RedirectStandardError = $true
    $start.RedirectStandardInput = $true
    $p = [Diagnostics.Process]::Start($start)
    try {
        $p.StandardInput.Close()
        $out = $p.StandardOutput.ReadToEndAsync()
        $err = $p.StandardError.ReadToEndAsync()
        if (-not $p.WaitForExit($TimeoutSeconds * 1000)) {
            $p.Kill($true)
            throw "the pwsh step did not finish within $TimeoutSeconds s: $Script"
        }
        $p.WaitForExit()
        $lines = @($out.Result -split "`n" | ForEach-Object TrimEnd | Where-Object { $_ })
        $json = $null
        if ($lines.Count -gt 0 -and $lines[-1] -match '^[\[{]') { $json = $lines[-1] | ConvertFrom-Json }
        [pscustomobject]@{ ExitCode = $p.ExitCode; Output = $out.Result; Errors = $err.Result; Json = $json }
    }
    finally {
        if (-not $p.HasExited) { $p.Kill($true) }
        $p.Dispose()
    }
}
