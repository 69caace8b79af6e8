#!/usr/bin/env bash
# The one command that runs every test suite: engine xunit tests, kernel tests
# (directly, or inside $NBD_VM_RUNNER, or skipped with a reason) and the Pester
# suite (skipped with a reason where pwsh is not installed).
# Ends with one summary line: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
results=$root/out/test-results
rm -rf "$results"; mkdir -p "$results"

passed=0; failed=0; skipped=0; broken=0

# Adds the counts from a "dotnet test" console log to the totals.
count_dotnet() {
    local log=$1 p f s
    # "dotnet test" prints one "Total tests:" block per test assembly.
    if ! grep -qE '^Total tests: ' "$log"; then
        echo "!! no test summary found in $log"; broken=1; return
    fi
    p=$(grep -E '^ +Passed: [0-9]+$' "$log" | awk '{s+=$2} END {print s+0}')
    f=$(grep -E '^ +Failed: [0-9]+$' "$log" | awk '{s+=$2} END {print s+0}')
    s=$(grep -E '^ +Skipped: [0-9]+$' "$log" | awk '{s+=$2} END {print s+0}')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    if grep -qE '^Test Run Aborted|The active test run was aborted' "$log"; then
        echo "!! test run aborted: see $log"; broken=1
    fi
}

echo "== build"
if ! dotnet build NbdPowerShell.sln -c Release -nologo -v q 2>&1 | tee "$results/build.log" | grep -E 'error|Warn|Elapsed' ; then :; fi
if ! grep -q 'Build succeeded' "$results/build.log"; then
    echo "build failed"; echo "0 passed, 1 failed"; exit 1
fi

echo "== engine and contract tests (xunit)"
dotnet test NbdPowerShell.sln -c Release --no-build -nologo --filter 'Category!=Kernel' \
    --logger 'console;verbosity=normal' 2>&1 | tee "$results/unit.log" | grep -E '^\s+(Failed|Skipped) |^Total tests|^ +(Passed|Failed|Skipped): |error'
count_dotnet "$results/unit.log"

echo "== kernel tests"
kernel_filter='Category=Kernel'
kernel_cmd=(dotnet test tests/NbdPowerShell.Engine.Tests/NbdPowerShell.Engine.Tests.csproj -c Release --no-build -nologo
            --filter "$kernel_filter" --logger 'console;verbosity=normal')
if [ "$(id -u)" = 0 ] && [ -e /sys/module/nbd ]; then
    NBD_KERNEL_TESTS=1 "${kernel_cmd[@]}" 2>&1 | tee "$results/kernel.log" | grep -E '^\s+(Failed|Skipped) |^Total tests|^ +(Passed|Failed|Skipped): '
    count_dotnet "$results/kernel.log"
elif [ -n "${NBD_VM_RUNNER:-}" ]; then
    echo "running kernel tests inside $NBD_VM_RUNNER"
    # The emulated VM is 20-30x slower: the test host may take minutes to connect back to "dotnet test".
    "$NBD_VM_RUNNER" --timeout 2400 -- env NBD_KERNEL_TESTS=1 HOME=/tmp DOTNET_CLI_HOME=/tmp DOTNET_NOLOGO=1 VSTEST_CONNECTION_TIMEOUT=900 \
        "${kernel_cmd[@]}" 2>&1 | tee "$results/kernel.log" | grep -E '^\s+(Failed|Skipped) |^Total tests|^ +(Passed|Failed|Skipped): |nbd-vm'
    count_dotnet "$results/kernel.log"
else
    n=$(grep -rhoE '\[Trait\("Category", "Kernel"\)\]' tests --include=*.cs | wc -l)
    echo "kernel tests: skipped ($n classes): no nbd module here and NBD_VM_RUNNER is not set"
fi

echo "== Pester"
if command -v pwsh >/dev/null 2>&1; then
    pwsh -NoProfile -NonInteractive -File tools/PesterTest.ps1 -ResultPath "$results/pester.txt"
    if [ -f "$results/pester.txt" ]; then
        read -r p f s < "$results/pester.txt"
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    else
        echo "!! Pester produced no result"; broken=1
    fi
else
    n=$(grep -rhoE '^\s*It ' tests --include=*.Tests.ps1 | wc -l)
    echo "Pester: skipped: pwsh not installed ($n tests not run)"
    skipped=$((skipped + n))
fi

[ "$broken" = 0 ] || failed=$((failed + 1))
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
