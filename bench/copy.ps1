#!/usr/bin/env pwsh
<#
.SYNOPSIS
Benchmark: Copy-NbdDisk against nbdcopy and qemu-img convert, copying a sparse image from nbdkit to a local file.

.DESCRIPTION
Builds the module, makes a sparse image (by default 4 GiB: 25 % data in 64 MiB runs plus 2048 scattered 4 KiB
blocks), serves it with `nbdkit file` over loopback TCP, and copies it to a new local file with each tool in turn,
rotating the order every round (A B C, B C A, C A B) so drift and order effects hit every tool alike. Copy-NbdDisk
runs in this pwsh (warm: one untimed copy first, as in an admin's session); the peers run as processes.
The destination is deleted and `sync` runs (untimed) before every copy, so no copy pays for an earlier one's
write-back. Every tool's first output is compared with the image (cmp). Prints each run, the medians and the
ratios (peer median / Copy-NbdDisk median: above 1 means Copy-NbdDisk is faster), and one cold run of
Copy-NbdDisk in a fresh pwsh (process start and module load included).

A benchmark, not a test: the numbers depend on the machine and its load.

.EXAMPLE
pwsh bench/copy.ps1 -Runs 5
#>
[CmdletBinding()]
param(
    [ValidateRange(1, 50)][int]$Runs = 5,
    [long]$Size = 4GB,
    [string]$Directory = (Join-Path ([IO.Path]::GetTempPath()) "nbdps-copy-bench-$PID"),
    [switch]$SkipBuild
)

$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
foreach ($tool in 'nbdkit', 'nbdcopy', 'qemu-img', 'nbdinfo', 'cmp') {
    if (-not (Get-Command $tool -ErrorAction Ignore)) { throw "$tool is not installed (apt-get install nbdkit libnbd-bin qemu-utils)." }
}
if (-not $SkipBuild) {
    dotnet build (Join-Path $root 'src/NbdPowerShell/NbdPowerShell.csproj') -c Release -nologo -v q | Out-Null
    if ($LASTEXITCODE -ne 0) { throw 'build failed' }
}
$modulePath = Join-Path $root 'out/NbdPowerShell/NbdPowerShell.psd1'
Import-Module $modulePath -Force

$null = New-Item -ItemType Directory -Force $Directory
$image = Join-Path $Directory 'source.img'
$nbdkit = $null
try {
    # The image: deterministic content, a quarter of it in 64 MiB runs, 2048 4 KiB blocks between them.
    $run = 64MB
    $random = [Random]::new(42)
    $slots = 0..([int]($Size / $run) - 1) | Sort-Object { $random.Next() } | Select-Object -First ([int]($Size / $run / 4))
    $buffer = [byte[]]::new($run)
    $f = [IO.FileStream]::new($image, 'Create')
    try {
        $f.SetLength($Size)
        foreach ($slot in $slots) {
            $random.NextBytes($buffer)
            $f.Position = $slot * $run
            $f.Write($buffer, 0, $run)
        }
        $block = [byte[]]::new(4096)
        $placed = 0
        while ($placed -lt 2048) {
            $at = [long]$random.NextInt64($Size / 4096) * 4096
            if ($slots -contains [int][math]::Floor($at / $run)) { continue }
            $random.NextBytes($block)
            $f.Position = $at
            $f.Write($block, 0, 4096)
            $placed++
        }
    }
    finally { $f.Dispose() }
    $allocated = [long]((du --block-size=1 $image) -split '\s+')[0]

    $listener = [Net.Sockets.TcpListener]::new([Net.IPAddress]::Loopback, 0)
    $listener.Start(); $port = $listener.LocalEndpoint.Port; $listener.Stop()
    $uri = "nbd://127.0.0.1:$port/"
    $nbdkit = Start-Process nbdkit -ArgumentList '-f', '-i', '127.0.0.1', '-p', $port, 'file', $image -PassThru
    $deadline = [DateTime]::UtcNow.AddSeconds(30)
    do { Start-Sleep -Milliseconds 100; nbdinfo --size $uri 2>$null | Out-Null } until ($LASTEXITCODE -eq 0 -or [DateTime]::UtcNow -gt $deadline)

    $tools = [ordered]@{
        'Copy-NbdDisk'     = { param($d) $null = Copy-NbdDisk $uri $d -ProgressAction SilentlyContinue }
        'nbdcopy'          = { param($d) nbdcopy $uri $d; if ($LASTEXITCODE) { throw "nbdcopy exited $LASTEXITCODE" } }
        'qemu-img convert' = { param($d) qemu-img convert -f raw -O raw $uri $d; if ($LASTEXITCODE) { throw "qemu-img exited $LASTEXITCODE" } }
    }
    $names = @($tools.Keys)
    $times = @{}; foreach ($n in $names) { $times[$n] = [Collections.Generic.List[double]]::new() }
    $destination = Join-Path $Directory 'copy.img'

    function Invoke-Timed([string]$Name) {
        Remove-Item $destination -ErrorAction Ignore
        sync
        $clock = [Diagnostics.Stopwatch]::StartNew()
        & $tools[$Name] $destination
        $clock.Stop()
        $clock.Elapsed.TotalSeconds
    }

    $load = (Get-Content /proc/loadavg) -split ' '
    Write-Host "$(Get-Date -Format 'yyyy-MM-dd HH:mm'), $([Environment]::ProcessorCount) CPUs, load average $($load[0..2] -join ' ') at start"
    Write-Host ("image: {0:0.##} GiB, {1:0.##} GiB allocated; source: nbdkit file over TCP; destination: a new file in {2}" -f ($Size / 1GB), ($allocated / 1GB), $Directory)

    # Warm-up: JIT-compiles the cmdlet's path in this process and warms nbdkit's page cache. Also checks each output.
    foreach ($n in $names) {
        $null = Invoke-Timed $n
        cmp $image $destination
        if ($LASTEXITCODE -ne 0) { throw "$n produced a copy that differs from the image" }
    }

    for ($r = 0; $r -lt $Runs; $r++) {
        $order = for ($i = 0; $i -lt $names.Count; $i++) { $names[($r + $i) % $names.Count] }
        $line = foreach ($n in $order) {
            $t = Invoke-Timed $n
            $times[$n].Add($t)
            '{0} {1:0.00} s' -f $n, $t
        }
        Write-Host "round $($r + 1): $($line -join ', ')"
    }
    Remove-Item $destination -ErrorAction Ignore
    sync

    # Cold: a fresh pwsh that loads the module and copies once.
    $pwsh = [Environment]::ProcessPath
    # The pwsh tool shim runs pwsh.dll under dotnet: start that, not the shim.
    $pwshArgs = @(if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { [Environment]::GetCommandLineArgs()[0] })
    $clock = [Diagnostics.Stopwatch]::StartNew()
    & $pwsh @pwshArgs -NoProfile -NonInteractive -Command "Import-Module '$modulePath'; `$null = Copy-NbdDisk '$uri' '$destination' -ProgressAction SilentlyContinue"
    $cold = $clock.Elapsed.TotalSeconds

    function Median([double[]]$v) { $s = $v | Sort-Object; if ($s.Count % 2) { $s[[int][math]::Floor($s.Count / 2)] } else { ($s[$s.Count / 2 - 1] + $s[$s.Count / 2]) / 2 } }
    $ours = Median $times['Copy-NbdDisk']
    Write-Host ''
    Write-Host '| tool | median s | min s | max s | runs | peer ÷ Copy-NbdDisk (median) |'
    Write-Host '|---|---|---|---|---|---|'
    foreach ($n in $names) {
        $m = Median $times[$n]
        $ratio = if ($n -eq 'Copy-NbdDisk') { '' } else { '{0:0.00}x' -f ($m / $ours) }
        Write-Host ('| {0} | {1:0.00} | {2:0.00} | {3:0.00} | {4} | {5} |' -f $n, $m, ($times[$n] | Measure-Object -Minimum).Minimum, ($times[$n] | Measure-Object -Maximum).Maximum, $times[$n].Count, $ratio)
    }
    Write-Host ('| Copy-NbdDisk in a fresh pwsh (start, module load, copy) | {0:0.00} | | | 1 | {1:0.00}x of nbdcopy''s median, {2:0.00}x of qemu-img''s |' -f $cold, ((Median $times['nbdcopy']) / $cold), ((Median $times['qemu-img convert']) / $cold))
    $load = (Get-Content /proc/loadavg) -split ' '
    Write-Host "load average $($load[0..2] -join ' ') at the end"
}
finally {
    if ($nbdkit -and -not $nbdkit.HasExited) { $nbdkit.Kill(); $null = $nbdkit.WaitForExit(10000) }
    Remove-Item -Recurse -Force $Directory -ErrorAction SilentlyContinue
}
