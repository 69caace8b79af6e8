#!/usr/bin/env pwsh
<#
.SYNOPSIS
Builds, tests and packages the NbdPowerShell module.
.EXAMPLE
./build.ps1 -Task Build
#>
[CmdletBinding()]
param(
    [ValidateSet('Build', 'Test')]
    [string]$Task = 'Build',
    [ValidateSet('Debug', 'Release')]
    [string]$Configuration = 'Release'
)
$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot
switch ($Task) {
    'Build' { dotnet build NbdPowerShell.sln -c $Configuration; if ($LASTEXITCODE) { throw "build failed" } }
    'Test' { bash ./tools/test.sh; if ($LASTEXITCODE) { throw "tests failed" } }
}
