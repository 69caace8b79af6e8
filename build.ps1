#!/usr/bin/env pwsh
<#
.SYNOPSIS
Builds, tests, documents, packages or serves the NbdPowerShell module.

.DESCRIPTION
Build    dotnet build of the solution; lays out the complete module in out/NbdPowerShell (psd1, psm1, format
         file, assemblies, en-US MAML help generated from docs/en-US by tools/HelpGen).
Test     Build, then tools/test.sh (xunit engine and contract tests, kernel tests, Pester suite).
Docs     Regenerates only the help (en-US/NbdPowerShell.dll-Help.xml, about_NbdPowerShell.help.txt). Uses
         platyPS (New-ExternalHelp) when it is installed, otherwise tools/HelpGen.
Package  Build, then a .nupkg in out/packages that Install-PSResource / Install-Module accept from a local
         repository (Register-PSResourceRepository -Name local -Uri ./out/packages -Trusted).
Serve    Build, import the built module, serve a 1 GB memory export named demo on -Port (default 10809) and
         wait (Ctrl+C stops it).

Without pwsh installed, ./build.sh runs this script with the repository's PowerShell .NET tool.

.EXAMPLE
./build.ps1 -Task Serve

.EXAMPLE
./build.sh -Task Serve -Port 0
#>
[CmdletBinding()]
param(
    [ValidateSet('Build', 'Test', 'Docs', 'Package', 'Serve')]
    [string]$Task = 'Build',

    [ValidateSet('Debug', 'Release')]
    [string]$Configuration = 'Release',

    # Serve only: the TCP port of the demo export; 0 lets the system choose a free one (reported).
    [ValidateRange(0, 65535)]
    [int]$Port = 10809
)

$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot
$moduleDir = Join-Path $PSScriptRoot 'out/NbdPowerShell'

function Invoke-Native {
    param([string]$What, [scriptblock]$Command)
    & $Command
    if ($LASTEXITCODE) { throw "$What failed (exit code $LASTEXITCODE)" }
}

function Invoke-Build {
    Invoke-Native 'dotnet build' { dotnet build NbdPowerShell.sln -c $Configuration -nologo }
    if (-not (Test-Path (Join-Path $moduleDir 'en-US/NbdPowerShell.dll-Help.xml'))) {
        throw "the build did not lay out the module in $moduleDir"
    }
    Write-Host "Module: $moduleDir"
}

function Invoke-Docs {
    $outDir = Join-Path $moduleDir 'en-US'
    if (Get-Module -ListAvailable -Name platyPS | Where-Object Version -lt '1.0') {
        Import-Module platyPS
        $null = New-ExternalHelp -Path docs/en-US -OutputPath $outDir -Force
        Write-Host "Help generated with platyPS in $outDir"
    }
    else {
        Invoke-Native 'dotnet build HelpGen' { dotnet build tools/HelpGen -c $Configuration -nologo -v q }
        Invoke-Native 'HelpGen' { dotnet "tools/HelpGen/bin/$Configuration/net10.0/HelpGen.dll" docs/en-US $outDir NbdPowerShell.dll-Help.xml }
        Write-Host "Help generated with tools/HelpGen in $outDir"
    }
}

switch ($Task) {
    'Build' { Invoke-Build }
    'Docs' { Invoke-Docs }
    'Test' {
        Invoke-Build
        Invoke-Native 'tests' { bash ./tools/test.sh }
    }
    'Package' {
        Invoke-Build
        $version = (Import-PowerShellDataFile (Join-Path $moduleDir 'NbdPowerShell.psd1')).ModuleVersion
        Invoke-Native 'dotnet pack' { dotnet pack tools/Package/Package.csproj -o out/packages -nologo "-p:Version=$version" }
        $package = Join-Path $PSScriptRoot "out/packages/NbdPowerShell.$version.nupkg"
        Write-Host "Package: $package"
        Write-Host "Install: Register-PSResourceRepository -Name local -Uri $(Split-Path $package) -Trusted; Install-PSResource NbdPowerShell -Repository local"
    }
    'Serve' {
        Invoke-Build
        Import-Module (Join-Path $moduleDir 'NbdPowerShell.psd1') -Force
        $export = Start-NbdExport -Memory -Size 1GB -Name demo -Port $Port
        $export | Format-Table | Out-Host
        Write-Host "Serving $($export.Uri) until Ctrl+C. Connect with:"
        Write-Host "  sudo $PSScriptRoot/tools/pwsh -c 'Import-Module $moduleDir; Connect-NbdDevice -ComputerName 127.0.0.1 -Port $($export.Port) -ExportName demo'"
        Write-Host "  sudo nbd-client -N demo 127.0.0.1 $($export.Port) /dev/nbd0"
        Write-Host "  nbdinfo $($export.Uri)"
        Wait-NbdExport -Name demo -Verbose
    }
}
