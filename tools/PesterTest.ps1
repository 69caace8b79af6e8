#!/usr/bin/env pwsh
<#
.SYNOPSIS
Runs the Pester 5 suite (tests/*.Tests.ps1) against the built module and writes "passed failed skipped" to -ResultPath.

.DESCRIPTION
Pester is imported from $env:PESTER_MODULE_PATH (a folder holding Pester.psd1, or its parent) or from the
module path. Kernel-tagged tests run here when running as root with the nbd module loaded; otherwise, when
$env:NBD_VM_RUNNER is set, they run inside that VM runner and their counts are added; otherwise they are skipped.
With -Tag, only tests with those tags run (the VM runner calls it with -Tag Kernel).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$ResultPath,

    [string[]]$Tag,

    [string]$OutputFormat = 'NUnitXml'
)

$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
Set-Location $root

if ($env:PESTER_MODULE_PATH) {
    $pesterPath = $env:PESTER_MODULE_PATH
    if (Test-Path (Join-Path $pesterPath 'Pester')) { $pesterPath = Join-Path $pesterPath 'Pester' }
    Import-Module $pesterPath -MinimumVersion 5.0 -Force
}
else {
    Import-Module Pester -MinimumVersion 5.0
}

$kernelHere = $IsLinux -and ((id -u) -eq '0') -and (Test-Path /sys/module/nbd)

function Invoke-Suite([string[]]$IncludeTag, [string[]]$ExcludeTag, [string]$XmlPath) {
    $config = [PesterConfiguration]::Default
    $config.Run.Path = Join-Path $root 'tests'
    $config.Run.PassThru = $true
    $config.Output.Verbosity = 'Detailed'
    if ($IncludeTag) { $config.Filter.Tag = $IncludeTag }
    if ($ExcludeTag) { $config.Filter.ExcludeTag = $ExcludeTag }
    $config.TestResult.Enabled = $true
    $config.TestResult.OutputFormat = $OutputFormat
    $config.TestResult.OutputPath = $XmlPath
    Invoke-Pester -Configuration $config
}

$resultDir = Split-Path ([IO.Path]::GetFullPath($ResultPath)) -Parent
$passed = 0; $failed = 0; $skipped = 0

if ($Tag) {
    $r = Invoke-Suite -IncludeTag $Tag -XmlPath (Join-Path $resultDir 'pester-tagged.xml')
    $passed += $r.PassedCount; $failed += $r.FailedCount + $r.FailedBlocksCount + $r.FailedContainersCount; $skipped += $r.SkippedCount
}
else {
    $exclude = if ($kernelHere) { @() } else { @('Kernel') }
    $r = Invoke-Suite -ExcludeTag $exclude -XmlPath (Join-Path $resultDir 'pester.xml')
    $passed += $r.PassedCount; $failed += $r.FailedCount + $r.FailedBlocksCount + $r.FailedContainersCount; $skipped += $r.SkippedCount

    if (-not $kernelHere) {
        if ($env:NBD_VM_RUNNER) {
            Write-Host "Running the Kernel-tagged Pester tests inside $env:NBD_VM_RUNNER"
            $kernelResult = Join-Path $resultDir 'pester-kernel.txt'
            Remove-Item $kernelResult -ErrorAction Ignore
            # The same pwsh as this one: with pwsh installed as a .NET tool the process is dotnet running pwsh.dll.
            $pwsh = @([Environment]::ProcessPath)
            if ([IO.Path]::GetFileNameWithoutExtension($pwsh[0]) -eq 'dotnet') { $pwsh += [Environment]::GetCommandLineArgs()[0] }
            & $env:NBD_VM_RUNNER --timeout 1800 -- @pwsh -NoProfile -File (Join-Path $PSScriptRoot 'PesterTest.ps1') -Tag Kernel -ResultPath $kernelResult
            if (Test-Path $kernelResult) {
                $p, $f, $s = (Get-Content $kernelResult -Raw).Trim() -split '\s+' | ForEach-Object { [int]$_ }
                $passed += $p; $failed += $f; $skipped += $s
            }
            else {
                Write-Host "!! the Kernel-tagged Pester run in the VM produced no result"
                $failed += 1
            }
        }
        else {
            Write-Host "Kernel-tagged Pester tests: skipped: not root with the nbd module loaded, and NBD_VM_RUNNER is not set"
        }
    }
}

Set-Content -Path $ResultPath -Value "$passed $failed $skipped"
Write-Host "Pester: $passed passed, $failed failed, $skipped skipped"
