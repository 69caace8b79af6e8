#!/usr/bin/env bash
# The one command that runs every test: the xunit projects of the solution and the Pester suite, each in a host
# part and a kernel part. The kernel part (xunit Category=Kernel, Pester tag Kernel) runs directly as root with the
# nbd module, otherwise inside $NBD_VM_RUNNER, otherwise on the host, where its tests skip with a reason. It runs
# beside the host parts, against a snapshot of the built module, in two lanes: xunit classes marked
# [Trait("KernelLane", "2")] (long tests that mostly wait for servers and kernel timeouts) run in a second VM boot
# beside the first, so their waiting overlaps; directly on the host the lanes run one after the other.
# PowerShell is the pwsh on PATH or the repository's .NET tool (tools/pwsh); Pester 5.9.1 is restored from NuGet.
# Every runner writes a result file (TRX, NUnit XML) into out/test-results; tools/TestSummary counts those files,
# and a missing or unreadable one counts as a failure. New test projects (any project of the solution with
# <IsTestProject>true</IsTestProject>) and new tests/*.Tests.ps1 files are picked up without edits here.
# Ends with one line: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
results=$root/out/test-results
rm -rf "$results" "$root/out/test-module"; mkdir -p "$results"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1

expected=()       # result files that must exist after the runs
runner_errors=0   # runners that exited non-zero (checked against the result files at the end)
extra_failed=0; extra_skipped=0
kernel_pid=; lane2_pid=
trap '[ -z "$kernel_pid" ] || kill "$kernel_pid" 2>/dev/null; [ -z "$lane2_pid" ] || kill "$lane2_pid" 2>/dev/null' EXIT
section() { echo "== $* [${SECONDS}s]"; }

section "build"
dotnet build NbdPowerShell.sln -c Release -nologo -v q 2>&1 | tee "$results/build.log" | grep -E 'error|warn|Elapsed'
if [ "${PIPESTATUS[0]}" != 0 ]; then
    echo "build failed: see $results/build.log"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
summary_dll=$root/tools/TestSummary/bin/Release/net10.0/TestSummary.dll

# Test projects of the solution, and those of them that hold kernel tests.
test_projects=(); kernel_projects=(); lane2_projects=(); quiet_projects=()
while IFS= read -r p; do
    p=${p//\\//}
    case $p in *.csproj) ;; *) continue ;; esac
    grep -qs '<IsTestProject>true</IsTestProject>' "$p" || continue
    test_projects+=("$p")
    if grep -rqs --include='*.cs' 'Trait("Category", "Kernel")' "$(dirname "$p")"; then kernel_projects+=("$p"); fi
    if grep -rqs --include='*.cs' 'Trait("KernelLane", "2")' "$(dirname "$p")"; then lane2_projects+=("$p"); fi
    if grep -rqs --include='*.cs' 'Trait("Measure", "Quiet")' "$(dirname "$p")"; then quiet_projects+=("$p"); fi
done < <(dotnet sln NbdPowerShell.sln list)

section "PowerShell and Pester"
pwsh=()
if pwsh_command=$(tools/pwsh --print-command 2>"$results/pwsh-restore.log"); then
    mapfile -t pwsh <<<"$pwsh_command"
    echo "pwsh: ${pwsh[*]}"
    if dotnet restore tools/Pester/Pester.csproj -v q >>"$results/pwsh-restore.log" 2>&1 &&
       PESTER_MODULE_PATH=$(dotnet msbuild tools/Pester/Pester.csproj -nologo -getProperty:PesterModulePath) &&
       [ -f "$PESTER_MODULE_PATH/Pester.psd1" ]; then
        export PESTER_MODULE_PATH
        echo "Pester: $PESTER_MODULE_PATH"
    else
        pwsh=()
    fi
fi
if [ "${#pwsh[@]}" = 0 ]; then
    cat "$results/pwsh-restore.log"
    n=$(grep -rhoE '^\s*It ' tests --include='*.Tests.ps1' | wc -l)
    if [ "${CI:-}" = true ]; then
        echo "Pester: FAILED: PowerShell or Pester could not be restored ($n tests not run)"
        extra_failed=$((extra_failed + 1))
    else
        echo "Pester: skipped: pwsh not installed and PowerShell or Pester could not be restored ($n tests not run)"
        extra_skipped=$((extra_skipped + n))
    fi
fi

# dotnet test of each project named after "--", one TRX per project in $R named $PREFIX-<project>.trx.
# With $HANG set, a hung test host is killed after that long (its TRX then says the run was aborted, which counts
# as a failure). A script, so that it runs the same here and inside the VM.
xunit_loop='st=0
for p in "$@"; do
    n=$(basename "$p" .csproj)
    dotnet test "$p" -c Release --no-build -nologo --filter "$FILTER" --results-directory "$R" \
        --logger "trx;LogFileName=$PREFIX-$n.trx" --logger "console;verbosity=normal" \
        ${HANG:+--blame-hang-timeout "$HANG" --blame-hang-dump-type none} || st=1
done
exit $st'
console_lines='^\s+(Failed|Skipped) |^Total tests|^ +(Passed|Failed|Skipped): |error|nbd-vm|^Pester |^\s*\[-\]|^Describing'

# The kernel part: xunit, then Pester. The module it imports is a snapshot, because the host part's package test
# rebuilds out/NbdPowerShell.
kernel_script=$xunit_loop
kernel_script=${kernel_script%exit \$st}
kernel_script+='if [ -n "$PWSH_COMMAND" ]; then
    mapfile -t pwsh <<<"$PWSH_COMMAND"
    "${pwsh[@]}" -NoProfile -NonInteractive -File tools/PesterTest.ps1 -Part Kernel -ResultDirectory "$R" || st=1
fi
exit $st'
cp -r "$root/out/NbdPowerShell" "$root/out/test-module"
for p in "${kernel_projects[@]}"; do expected+=("$results/kernel-$(basename "$p" .csproj).trx"); done
[ "${#pwsh[@]}" = 0 ] || expected+=("$results/pester-kernel.xml")
for p in "${lane2_projects[@]}"; do expected+=("$results/kernel2-$(basename "$p" .csproj).trx"); done
kernel_env=(R="$results" PREFIX=kernel FILTER='Category=Kernel&KernelLane!=2' NBD_KERNEL_TESTS=1
            NBD_TEST_MODULE="$root/out/test-module/NbdPowerShell.psd1" PWSH_COMMAND="$pwsh_command")
[ "${#pwsh[@]}" != 0 ] || kernel_env+=(PWSH_COMMAND=)
# The second lane: xunit only (Pester stays in the first).
lane2_env=(R="$results" PREFIX=kernel2 FILTER='Category=Kernel&KernelLane=2' NBD_KERNEL_TESTS=1 PWSH_COMMAND=)
lane2_run=()
if [ "$(id -u)" = 0 ] && [ -e /sys/module/nbd ]; then
    kernel_where="here (root, nbd module loaded)"
    kernel_run=(env "${kernel_env[@]}" HANG=10m bash -c "$kernel_script" kernel "${kernel_projects[@]}")
    lane2_sequential=1
elif [ -n "${NBD_VM_RUNNER:-}" ]; then
    kernel_where="inside $NBD_VM_RUNNER"
    # .NET runs 20-30x slower in the emulated guest. Its HOME may differ: dotnet gets a writable one, and pwsh
    # and Pester are passed as absolute paths. The guest boots in seconds on an idle machine, but on a loaded one
    # (CI beside other builds) it needed more than the runner's default 180 s, and its kernel's check of the
    # IO-APIC timer failed ("Kernel panic - not syncing: IO-APIC + timer doesn't work!"): no_timer_check skips it.
    # No hang blame in the guest: its data collector process starts too slowly there ("testhost process failed to
    # connect to datacollector process after 90 seconds"), and the runner's --timeout bounds a hang anyway; the
    # test host gets 15 minutes to connect to vstest instead of 90 s.
    in_vm=(env NBD_VM_BOOT_TIMEOUT="${NBD_VM_BOOT_TIMEOUT:-900}" NBD_VM_APPEND="${NBD_VM_APPEND:-no_timer_check}"
           "$NBD_VM_RUNNER" --timeout 3600 -- env HANG= VSTEST_CONNECTION_TIMEOUT=900 HOME=/tmp DOTNET_CLI_HOME=/tmp)
    kernel_run=("${in_vm[@]}" "${kernel_env[@]}" bash -c "$kernel_script" kernel "${kernel_projects[@]}")
    lane2_run=("${in_vm[@]}" "${lane2_env[@]}" bash -c "$kernel_script" kernel2 "${lane2_projects[@]}")
else
    kernel_where="on the host, where they skip: no nbd module here (or not root) and NBD_VM_RUNNER is not set"
    kernel_run=(env "${kernel_env[@]}" HANG=10m bash -c "$kernel_script" kernel "${kernel_projects[@]}")
    lane2_sequential=1
fi
if [ "${lane2_sequential:-0}" = 1 ] && [ "${#lane2_projects[@]}" != 0 ]; then
    lane2_run=(env "${lane2_env[@]}" HANG=10m bash -c "$kernel_script" kernel2 "${lane2_projects[@]}")
fi
# Tests that measure (process-wide allocation per request, Measure=Quiet) run first, with nothing of ours beside them:
# next to two emulated VMs on a two-core machine their counts move with thread and JIT timing, not with the code.
if [ "${#quiet_projects[@]}" != 0 ]; then
    section "tests that measure (xunit Measure=Quiet), before anything runs beside them"
    for p in "${quiet_projects[@]}"; do expected+=("$results/quiet-$(basename "$p" .csproj).trx"); done
    R=$results PREFIX=quiet FILTER='Category!=Kernel&Measure=Quiet' HANG=10m bash -c "$xunit_loop" xunit "${quiet_projects[@]}" 2>&1 |
        tee "$results/quiet.log" | grep -E "$console_lines"
    [ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))
fi

section "kernel tests (xunit and Pester) started in the background, $kernel_where"
if [ "${#lane2_run[@]}" = 0 ]; then
    "${kernel_run[@]}" >"$results/kernel.log" 2>&1 &
    kernel_pid=$!
elif [ "${lane2_sequential:-0}" = 1 ]; then
    { "${kernel_run[@]}" >"$results/kernel.log" 2>&1; a=$?; "${lane2_run[@]}" >"$results/kernel2.log" 2>&1 || a=1; exit $a; } &
    kernel_pid=$!
else
    "${kernel_run[@]}" >"$results/kernel.log" 2>&1 &
    kernel_pid=$!
    "${lane2_run[@]}" >"$results/kernel2.log" 2>&1 &
    lane2_pid=$!
fi

section "engine and contract tests (xunit)"
for p in "${test_projects[@]}"; do expected+=("$results/unit-$(basename "$p" .csproj).trx"); done
R=$results PREFIX=unit FILTER='Category!=Kernel&Measure!=Quiet' HANG=10m bash -c "$xunit_loop" xunit "${test_projects[@]}" 2>&1 |
    tee "$results/unit.log" | grep -E "$console_lines"
[ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))

if [ "${#pwsh[@]}" != 0 ]; then
    section "Pester (host part)"
    expected+=("$results/pester.xml")
    "${pwsh[@]}" -NoProfile -NonInteractive -File tools/PesterTest.ps1 -Part Host -ResultDirectory "$results" 2>&1 |
        tee "$results/pester.log"
    [ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))
fi

section "kernel tests (xunit and Pester), $kernel_where"
wait "$kernel_pid"
kernel_status=$?
kernel_pid=
if [ -n "$lane2_pid" ]; then
    wait "$lane2_pid" || kernel_status=1
    lane2_pid=
fi
grep -E "$console_lines" "$results/kernel.log"
[ ! -e "$results/kernel2.log" ] || grep -E "$console_lines" "$results/kernel2.log"
[ "$kernel_status" = 0 ] || { echo "kernel part exited with $kernel_status: see $results/kernel.log and kernel2.log"; runner_errors=$((runner_errors + 1)); }

section "results (counted from the result files)"
if ! counts=$(dotnet "$summary_dll" "${expected[@]}"); then
    echo "!! tools/TestSummary could not count the results"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
printf '%s\n' "$counts" | grep -v '^TOTAL '
read -r _ passed failed skipped <<<"$(printf '%s\n' "$counts" | grep '^TOTAL ')"
failed=$((failed + extra_failed)); skipped=$((skipped + extra_skipped))
if [ "$runner_errors" != 0 ] && [ "$failed" = 0 ]; then
    echo "!! $runner_errors test runner(s) exited with an error although no result file shows a failure: see the logs in $results"
    failed=1
fi
if [ $((passed + failed + skipped)) = 0 ]; then
    echo "!! no test ran"; failed=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
