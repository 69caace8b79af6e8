#!/usr/bin/env pwsh
<#
.SYNOPSIS
Runs the Pester 5 suite (tests/*.Tests.ps1) against the built module and writes NUnit XML result files.

.DESCRIPTION
Two parts, each with its own result file in -ResultDirectory:
  pester.xml         every test not tagged Kernel, run here;
  pester-kernel.xml  the Kernel-tagged tests: here when running as root with the nbd module loaded, otherwise
                     inside $env:NBD_VM_RUNNER when that is set, otherwise here, where they skip with a reason.
-Part Kernel runs only the Kernel-tagged part here (the VM run calls it so).

Pester comes from $env:PESTER_MODULE_PATH (the folder holding Pester.psd1) when set, otherwise it is restored
from NuGet through tools/Pester/Pester.csproj. The VM run gets that path and the pwsh to run explicitly.
Exits 1 when a test or a part failed. tools/test.sh counts the result files, not this script's output.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$ResultDirectory,

    [ValidateSet('All', 'Kernel')]
    [string]$Part = 'All'
)

$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
Set-Location $root
. (Join-Path $root 'tests/PwshProcess.ps1')
$ResultDirectory = [IO.Path]::GetFullPath($ResultDirectory)
$null = New-Item -ItemType Directory -Force $ResultDirectory

if (-not $env:PESTER_MODULE_PATH) {
    $project = Join-Path $PSScriptRoot 'Pester/Pester.csproj'
    $restore = dotnet restore $project -v q 2>&1
    if ($LASTEXITCODE) { throw "restoring Pester from NuGet failed:`n$($restore -join "`n")" }
    $env:PESTER_MODULE_PATH = (dotnet msbuild $project -nologo -getProperty:PesterModulePath).Trim()
}
$pesterManifest = Join-Path $env:PESTER_MODULE_PATH 'Pester.psd1'
if (-not (Test-Path $pesterManifest)) { throw "no Pester.psd1 in PESTER_MODULE_PATH ($env:PESTER_MODULE_PATH)" }
Import-Module $pesterManifest -Force

$kernelHere = $IsLinux -and ((id -u) -eq '0') -and (Test-Path /sys/module/nbd)

# Discovery dot-sources every test file, which takes minutes in the emulated VM: the Kernel-tagged part looks only
# at the files that name a Kernel tag (all of them if none does, so a missing tag still shows up as no tests).
$testFiles = Get-ChildItem (Join-Path $root 'tests') -Recurse -Filter '*.Tests.ps1'
$kernelFiles = @($testFiles | Where-Object { Select-String -Quiet -Path $_.FullName -Pattern '-Tags?\b[^\r\n]*\bKernel\b' })
if (-not $kernelFiles) { $kernelFiles = $testFiles }

function Invoke-Part([string[]]$IncludeTag, [string[]]$ExcludeTag, [string]$XmlPath) {
    $config = [PesterConfiguration]::Default
    $config.Run.Path = if ($IncludeTag -contains 'Kernel') { [string[]]$kernelFiles.FullName } else { Join-Path $root 'tests' }
    $config.Run.PassThru = $true
    $config.Output.Verbosity = 'Detailed'
    # Logs (test.sh tees this output) read better without colour codes.
    if ([Console]::IsOutputRedirected) { $config.Output.RenderMode = 'Plaintext' }
    if ($IncludeTag) { $config.Filter.Tag = $IncludeTag }
    if ($ExcludeTag) { $config.Filter.ExcludeTag = $ExcludeTag }
    $config.TestResult.Enabled = $true
    $config.TestResult.OutputFormat = 'NUnitXml'
    $config.TestResult.OutputPath = $XmlPath
    $r = Invoke-Pester -Configuration $config
    $what = if ($IncludeTag) { "Kernel-tagged" } else { "host" }
    Write-Host ("Pester ($what): {0} passed, {1} failed, {2} skipped, {3} failed blocks, {4} failed containers" -f
        $r.PassedCount, $r.FailedCount, $r.SkippedCount, $r.FailedBlocksCount, $r.FailedContainersCount)
    ($r.FailedCount + $r.FailedBlocksCount + $r.FailedContainersCount) -eq 0
}

$kernelXml = Join-Path $ResultDirectory 'pester-kernel.xml'
Remove-Item $kernelXml -ErrorAction Ignore
if ($Part -eq 'Kernel') {
    $ok = Invoke-Part -IncludeTag Kernel -XmlPath $kernelXml
    exit [int](-not $ok)
}

$ok = Invoke-Part -ExcludeTag Kernel -XmlPath (Join-Path $ResultDirectory 'pester.xml')
if ($kernelHere -or -not $env:NBD_VM_RUNNER) {
    if (-not $kernelHere) {
        Write-Host "Kernel-tagged Pester tests run here and skip: not root with the nbd module loaded, and NBD_VM_RUNNER is not set"
    }
    $ok = (Invoke-Part -IncludeTag Kernel -XmlPath $kernelXml) -and $ok
}
else {
    # The VM shares this directory read-write, so the result file lands here. Start the pwsh that runs this
    # script (dotnet + pwsh.dll under the .NET tool), never a shim; the guest's HOME may differ, so the Pester
    # path travels in PESTER_MODULE_PATH and every path is absolute.
    Write-Host "Running the Kernel-tagged Pester tests inside $env:NBD_VM_RUNNER"
    $pwsh = Get-PwshCommand
    & $env:NBD_VM_RUNNER --timeout 1800 -- @pwsh -NoProfile -NonInteractive -File (Join-Path $PSScriptRoot 'PesterTest.ps1') -Part Kernel -ResultDirectory $ResultDirectory
    $vmExit = $LASTEXITCODE
    if ($vmExit) { Write-Host "!! the Kernel-tagged Pester run in the VM exited with $vmExit" }
    $ok = ($vmExit -eq 0) -and $ok
}
exit [int](-not $ok)
