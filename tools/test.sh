#!/usr/bin/env bash
# The one command that runs every test: the xunit projects of the solution (kernel tests directly, or inside
# $NBD_VM_RUNNER, or on the host where they skip with a reason) and the Pester suite (tools/PesterTest.ps1,
# with the pwsh on PATH or the repository's PowerShell .NET tool).
# Every runner writes a result file (TRX, NUnit XML) into out/test-results; the summary is counted from those
# files by tools/TestSummary, and a missing or unreadable file counts as a failure. New test projects (any
# project of the solution with <IsTestProject>true</IsTestProject>) and new tests/*.Tests.ps1 files are picked
# up without edits here.
# Ends with one line: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
results=$root/out/test-results
rm -rf "$results"; mkdir -p "$results"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1

expected=()       # result files that must exist after the runs
runner_errors=0   # runners that exited non-zero (checked against the result files at the end)
extra_failed=0; extra_skipped=0

echo "== build"
dotnet build NbdPowerShell.sln -c Release -nologo -v q 2>&1 | tee "$results/build.log" | grep -E 'error|warn|Elapsed'
if [ "${PIPESTATUS[0]}" != 0 ]; then
    echo "build failed: see $results/build.log"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
summary_dll=$root/tools/TestSummary/bin/Release/net10.0/TestSummary.dll

# Test projects of the solution, and those of them that hold kernel tests.
test_projects=(); kernel_projects=()
while IFS= read -r p; do
    p=${p//\\//}
    case $p in *.csproj) ;; *) continue ;; esac
    grep -qs '<IsTestProject>true</IsTestProject>' "$p" || continue
    test_projects+=("$p")
    if grep -rqs --include='*.cs' 'Trait("Category", "Kernel")' "$(dirname "$p")"; then kernel_projects+=("$p"); fi
done < <(dotnet sln NbdPowerShell.sln list)

# dotnet test of each project named after "--", one TRX per project in $R named $PREFIX-<project>.trx.
# A hung test host is killed after $HANG (its TRX then says the run was aborted, which counts as a failure).
# Kept as a script so that it runs the same here and inside the VM.
xunit_loop='st=0
for p in "$@"; do
    n=$(basename "$p" .csproj)
    dotnet test "$p" -c Release --no-build -nologo --filter "$FILTER" --results-directory "$R" \
        --logger "trx;LogFileName=$PREFIX-$n.trx" --logger "console;verbosity=normal" \
        --blame-hang-timeout "$HANG" --blame-hang-dump-type none || st=1
done
exit $st'
xunit_console='^\s+(Failed|Skipped) |^Total tests|^ +(Passed|Failed|Skipped): |error|nbd-vm'

echo "== engine and contract tests (xunit)"
for p in "${test_projects[@]}"; do expected+=("$results/unit-$(basename "$p" .csproj).trx"); done
R=$results PREFIX=unit FILTER='Category!=Kernel' HANG=10m bash -c "$xunit_loop" xunit "${test_projects[@]}" 2>&1 |
    tee "$results/unit.log" | grep -E "$xunit_console"
[ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))

echo "== kernel tests (xunit)"
for p in "${kernel_projects[@]}"; do expected+=("$results/kernel-$(basename "$p" .csproj).trx"); done
kernel_env=(R="$results" PREFIX=kernel FILTER='Category=Kernel' NBD_KERNEL_TESTS=1)
if [ "${#kernel_projects[@]}" = 0 ]; then
    echo "no test project holds kernel tests"
    kernel_run=(true)
elif [ "$(id -u)" = 0 ] && [ -e /sys/module/nbd ]; then
    kernel_run=(env "${kernel_env[@]}" HANG=10m bash -c "$xunit_loop" xunit "${kernel_projects[@]}")
elif [ -n "${NBD_VM_RUNNER:-}" ]; then
    echo "running kernel tests inside $NBD_VM_RUNNER"
    # .NET runs 20-30x slower in the emulated guest; its HOME may differ, so dotnet gets a writable one.
    kernel_run=("$NBD_VM_RUNNER" --timeout 2400 -- env "${kernel_env[@]}" HANG=30m HOME=/tmp DOTNET_CLI_HOME=/tmp
                bash -c "$xunit_loop" xunit "${kernel_projects[@]}")
else
    echo "kernel tests run on the host and skip: no nbd module here (or not root) and NBD_VM_RUNNER is not set"
    kernel_run=(env "${kernel_env[@]}" HANG=10m bash -c "$xunit_loop" xunit "${kernel_projects[@]}")
fi
"${kernel_run[@]}" 2>&1 | tee "$results/kernel.log" | grep -E "$xunit_console"
[ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))

echo "== Pester"
if pwsh_command=$(tools/pwsh --print-command 2>"$results/pwsh-restore.log"); then
    mapfile -t pwsh <<<"$pwsh_command"
    echo "pwsh: ${pwsh[*]}"
    expected+=("$results/pester.xml" "$results/pester-kernel.xml")
    "${pwsh[@]}" -NoProfile -NonInteractive -File tools/PesterTest.ps1 -ResultDirectory "$results" 2>&1 |
        tee "$results/pester.log"
    [ "${PIPESTATUS[0]}" = 0 ] || runner_errors=$((runner_errors + 1))
else
    cat "$results/pwsh-restore.log"
    n=$(grep -rhoE '^\s*It ' tests --include='*.Tests.ps1' | wc -l)
    if [ "${CI:-}" = true ]; then
        echo "Pester: FAILED: no pwsh and the PowerShell tool could not be restored ($n tests not run)"
        extra_failed=$((extra_failed + 1))
    else
        echo "Pester: skipped: pwsh not installed and the PowerShell tool could not be restored ($n tests not run)"
        extra_skipped=$((extra_skipped + n))
    fi
fi

echo "== results (counted from the result files)"
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
