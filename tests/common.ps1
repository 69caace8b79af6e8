# Dot-sourced at the top of every *.Tests.ps1 (so it also runs during Pester's Discovery phase).
# Imports the BUILT module from out/NbdPowerShell and defines shared helpers.
. (Join-Path $PSScriptRoot 'PwshProcess.ps1')
$global:NbdModulePath = [IO.Path]::GetFullPath([IO.Path]::Combine($PSScriptRoot, '..', 'out', 'NbdPowerShell', 'NbdPowerShell.psd1'))
if (-not (Get-Module NbdPowerShell)) {
    Import-Module $global:NbdModulePath -Force -ErrorAction Stop
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
