#!/usr/bin/env pwsh
<#
.SYNOPSIS
Runs the Pester 5 suite (tests/*.Tests.ps1) against the built module and writes NUnit XML result files.

.DESCRIPTION
Two parts, each with its own result file in -ResultDirectory:
  Host    pester.xml: every test not tagged Kernel;
  Kernel  pester-kernel.xml: the Kernel-tagged tests. They need root and the nbd module and skip with a reason
          elsewhere; tools/test.sh runs this part inside $NBD_VM_RUNNER where the host has no nbd module.
-Part All runs both here. tools/test.sh counts the result files, not this script's output; the exit code is 1
when a test or a block failed.

Pester is imported from $env:PESTER_MODULE_PATH (the folder holding Pester.psd1; tools/test.sh restores Pester
5.9.1 from NuGet through tools/Pester/Pester.csproj and sets it), otherwise from the module path.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$ResultDirectory,

    [ValidateSet('All', 'Host', 'Kernel')]
    [string]$Part = 'All'
)

$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
Set-Location $root
$ResultDirectory = [IO.Path]::GetFullPath($ResultDirectory)
$null = New-Item -ItemType Directory -Force $ResultDirectory

if ($env:PESTER_MODULE_PATH) {
    Import-Module (Join-Path $env:PESTER_MODULE_PATH 'Pester.psd1') -Force
}
else {
    Import-Module Pester -MinimumVersion 5.0
}

# Discovery dot-sources every test file, which takes minutes in the emulated VM: the Kernel part looks only at the
# files that name a Kernel tag (all of them if none does, so a lost tag shows up as tests that do not run).
$testFiles = Get-ChildItem (Join-Path $root 'tests') -Recurse -Filter '*.Tests.ps1'
$kernelFiles = @($testFiles | Where-Object { Select-String -Quiet -Path $_.FullName -Pattern '-Tags?\b[^\r\n]*\bKernel\b' })
if (-not $kernelFiles) { $kernelFiles = $testFiles }

function Invoke-Part([ValidateSet('Host', 'Kernel')][string]$Name) {
    $config = [PesterConfiguration]::Default
    if ($Name -eq 'Kernel') {
        $config.Run.Path = [string[]]$kernelFiles.FullName
        $config.Filter.Tag = 'Kernel'
        $xml = 'pester-kernel.xml'
    }
    else {
        $config.Run.Path = Join-Path $root 'tests'
        $config.Filter.ExcludeTag = 'Kernel'
        $xml = 'pester.xml'
    }
    $config.Run.PassThru = $true
    $config.Output.Verbosity = 'Detailed'
    # Logs (test.sh tees this output) read better without colour codes.
    if ([Console]::IsOutputRedirected) { $config.Output.RenderMode = 'Plaintext' }
    $config.TestResult.Enabled = $true
    $config.TestResult.OutputFormat = 'NUnitXml'
    $config.TestResult.OutputPath = Join-Path $ResultDirectory $xml
    $r = Invoke-Pester -Configuration $config
    Write-Host ("Pester ($Name part): {0} passed, {1} failed, {2} skipped, {3} failed blocks, {4} failed containers" -f
        $r.PassedCount, $r.FailedCount, $r.SkippedCount, $r.FailedBlocksCount, $r.FailedContainersCount)
    ($r.FailedCount + $r.FailedBlocksCount + $r.FailedContainersCount) -eq 0
}

$ok = $true
if ($Part -in 'All', 'Host') { $ok = (Invoke-Part Host) -and $ok }
if ($Part -in 'All', 'Kernel') { $ok = (Invoke-Part Kernel) -and $ok }
exit [int](-not $ok)
