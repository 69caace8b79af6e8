#!/usr/bin/env bash
# How a supervised read-only device rides through a server restart (issue 10), measured in the nbd VM:
# our engine, nbdkit and nbd-server are each killed (SIGKILL) and started again on the same port CYCLES times
# while dd reads the device (the kernel tests Read_only_device_survives_a_restart_of_*), plus the side-by-side
# run with Debian's nbd-client -persist. Prints, per server, the median time from the restarted server accepting
# connections to the first completed read, and the median and longest dd stall around each restart.
#
# Usage: bench/reliability.sh [CYCLES]   (default 5; needs the VM runner, see NBD_VM_RUNNER)
# Timings inside the VM are emulated (qemu TCG, .NET 20-30x slower) and therefore pessimistic.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-5}
runner=${NBD_VM_RUNNER:-/work/shared/tools/nbd-vm-run.sh}
[ -x "$runner" ] || { echo "no VM runner at $runner (set NBD_VM_RUNNER)" >&2; exit 2; }
mkdir -p out
log=$PWD/out/reliability-$(date +%Y%m%d-%H%M%S).tsv
: > "$log"

dotnet build NbdPowerShell.sln -c Release -nologo -v q >/dev/null
"$runner" --timeout 7200 -- env NBD_KERNEL_TESTS=1 HOME=/tmp DOTNET_CLI_HOME=/tmp DOTNET_NOLOGO=1 \
    NBDPS_RESTART_CYCLES="$cycles" NBDPS_RELIABILITY_LOG="$log" \
    dotnet test tests/NbdPowerShell.Engine.Tests/NbdPowerShell.Engine.Tests.csproj -c Release --no-build -nologo \
    --filter 'FullyQualifiedName~Read_only_device_survives_a_restart|FullyQualifiedName~Side_by_side_with_nbd_client' \
    --logger 'console;verbosity=normal' | grep -E '^\s+(Passed|Failed) |^Total tests|^ +(Passed|Failed):'

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maximum() { sort -n | tail -n 1; }

echo "results in $log"
cut -f1 "$log" | grep -v '^nbd-client' | sort -u | while IFS= read -r scenario; do
    rows=$(awk -F'\t' -v s="$scenario" '$1 == s' "$log")
    n=$(printf '%s\n' "$rows" | wc -l)
    first=$(printf '%s\n' "$rows" | cut -f2 | median)
    first_start=$(printf '%s\n' "$rows" | cut -f3 | median)
    stall=$(printf '%s\n' "$rows" | cut -f4 | median)
    stall_max=$(printf '%s\n' "$rows" | cut -f4 | maximum)
    outage=$(printf '%s\n' "$rows" | cut -f5 | median)
    printf '%s (%d restarts): first read %s s after the server accepted again (%s s after its process started); dd stall median %s s, longest %s s; server down %s s\n' \
        "$scenario" "$n" "$first" "$first_start" "$stall" "$stall_max" "$outage"
done
grep '^nbd-client' "$log" | cut -f2- | sed 's/^/nbd-client -persist: /' || true
