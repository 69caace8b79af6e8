#!/usr/bin/env bash
# Hunts timing-dependent tests: runs the README's test command (tools/test.sh) several times, each in a fresh
# clone of the committed HEAD, optionally beside CPU hogs (stress-ng), keeps every run's result files and log,
# and prints which tests failed in which run. For contributors; not part of CI.
#
# Usage: tools/flake-hunt.sh [-n RUNS] [--stress [N]] [--host-only] [--out DIR] [--keep-clones]
#   -n RUNS        number of runs (default 5)
#   --stress [N]   run `stress-ng --cpu N` (default 2) beside each run (Debian package stress-ng)
#   --out DIR      where the runs are kept (default out/flake-hunt/<date-time>): DIR/run-K/test.log and
#                  DIR/run-K/test-results/ (TRX, NUnit XML)
#   --keep-clones  keep the fresh clones (normally removed after each run)
#   --host-only    no kernel-test VMs: the kernel tests skip (a run takes about a third of the time; use it to
#                  repeat the host tests under stress-ng more often, and the full runs for the kernel tests)
# Kernel tests run in $NBD_VM_RUNNER when set, otherwise in ../shared/tools/nbd-vm-run.sh next to this
# repository when that exists (as in .ci/run), otherwise they skip.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=5; stress=0; out=; keep=0; host_only=0
while [ $# -gt 0 ]; do
    case $1 in
        -n) runs=$2; shift 2 ;;
        --stress) if [[ ${2:-} =~ ^[0-9]+$ ]]; then stress=$2; shift 2; else stress=2; shift; fi ;;
        --out) out=$2; shift 2 ;;
        --keep-clones) keep=1; shift ;;
        --host-only) host_only=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "-n wants a positive number" >&2; exit 2; }
if [ "$stress" != 0 ] && ! command -v stress-ng >/dev/null; then
    echo "--stress needs stress-ng (apt-get install stress-ng)" >&2; exit 2
fi
if [ "$host_only" = 1 ]; then
    NBD_VM_RUNNER=
elif [ -z "${NBD_VM_RUNNER:-}" ] && [ -x "$repo/../shared/tools/nbd-vm-run.sh" ]; then
    NBD_VM_RUNNER=$(cd "$repo/../shared/tools" && pwd)/nbd-vm-run.sh
fi
export NBD_VM_RUNNER=${NBD_VM_RUNNER:-}
commit=$(git -C "$repo" rev-parse HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "note: uncommitted changes are not tested; the runs use commit $commit" >&2
fi
out=${out:-$repo/out/flake-hunt/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/nbdps-flake-hunt.XXXXXX")

stress_pid=
stop_stress() {
    if [ -n "$stress_pid" ]; then kill "$stress_pid" 2>/dev/null; wait "$stress_pid" 2>/dev/null; stress_pid=; fi
}
trap 'stop_stress; [ "$keep" = 1 ] || rm -rf "$work"' EXIT
trap 'echo "interrupted"; exit 130' INT TERM

load="no extra load"; [ "$stress" = 0 ] || load="beside stress-ng --cpu $stress"
echo "flake hunt: $runs run(s) of tools/test.sh on $commit, $load, kernel runner ${NBD_VM_RUNNER:-none}"
echo "keeping results in $out"
for k in $(seq 1 "$runs"); do
    clone=$work/run-$k
    dest=$out/run-$k
    mkdir -p "$dest"
    git clone -q --no-checkout "$repo" "$clone" && git -C "$clone" checkout -q --detach "$commit" || {
        echo "run $k: could not clone $repo" | tee "$dest/test.log"; continue; }
    if [ "$stress" != 0 ]; then stress-ng --cpu "$stress" --quiet & stress_pid=$!; fi
    start=$SECONDS
    (cd "$clone" && ./tools/test.sh) >"$dest/test.log" 2>&1
    status=$?
    stop_stress
    echo "$status" >"$dest/exit-code"
    cp -r "$clone/out/test-results" "$dest/" 2>/dev/null
    [ "$keep" = 1 ] || rm -rf "$clone"
    echo "run $k ($((SECONDS - start)) s, exit $status): $(tail -n 1 "$dest/test.log")"
    grep -E '^    FAILED: |\(counted as 1 failed\)|^!! ' "$dest/test.log" | sed 's/^ */    /'
done

echo "== tests that failed, with the runs they failed in"
for k in $(seq 1 "$runs"); do
    sed -n 's/^    FAILED: //p; s/^  \(.*\): \(missing\|unreadable\|unknown\).*/result file \1: \2/p; s/^!! \(.*\)/\1/p' \
        "$out/run-$k/test.log" 2>/dev/null | sort -u | sed "s/^/$k\t/"
done | awk -F'\t' '{ runs[$2] = runs[$2] (runs[$2] == "" ? "" : ",") $1 } END { for (t in runs) print "  runs " runs[t] ": " t }' | sort
clean=0
for k in $(seq 1 "$runs"); do [ "$(cat "$out/run-$k/exit-code" 2>/dev/null)" = 0 ] && clean=$((clean + 1)); done
echo "$clean of $runs run(s) clean; logs and result files in $out"
[ "$clean" = "$runs" ]
