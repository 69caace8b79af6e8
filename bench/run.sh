#!/usr/bin/env bash
# Benchmark: the engine against nbdkit, nbd-server and qemu-nbd on this machine, in one run,
# with fio's nbd engine (libnbd). Prints a table of MiB/s and IOPS per server and workload, our
# ratio to each peer, and the engine's peak RSS. A benchmark, not a test: numbers vary by machine.
#
#   bench/run.sh [--runtime SECONDS] [--size 4G] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=8; size=4G; dir=${TMPDIR:-/tmp}/nbdps-bench
while [ $# -gt 0 ]; do
    case $1 in
        --runtime) runtime=$2; shift 2;;
        --size) size=$2; shift 2;;
        --dir) dir=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
for t in fio nbdkit nbd-server qemu-nbd; do
    command -v $t >/dev/null || [ -x /usr/sbin/$t ] || [ -x /usr/bin/$t ] || { echo "$t is not installed" >&2; exit 1; }
done
dotnet build bench/NbdPowerShell.Bench -c Release -nologo -v q >/dev/null
engine=bench/NbdPowerShell.Bench/bin/Release/net10.0/NbdPowerShell.Bench
rm -rf "$dir"; mkdir -p "$dir"
port=10950
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$1/bench" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 did not come up" >&2; return 1; }

# name;fio arguments. The job region is 1 GiB of the export so memory backends stay bounded.
workloads=(
  "seq-read-1M-qd8;--rw=read --bs=1M --iodepth=8"
  "seq-write-1M-qd8;--rw=write --bs=1M --iodepth=8"
  "rand-read-4k-qd32;--rw=randread --bs=4k --iodepth=32"
  "randrw-64k-qd16;--rw=randrw --bs=64k --iodepth=16"
)

run_fio() { # port workload-args -> "MiB/s IOPS" (read+write)
    local out
    out=$(fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$1/bench" $2 --size=1G --runtime="$runtime" \
        --time_based --ramp_time=1 --output-format=json 2>/dev/null)
    python3 -c '
import json,sys
j=json.load(sys.stdin)["jobs"][0]
bw=(j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576
iops=j["read"]["iops"]+j["write"]["iops"]
print(f"{bw:.0f} {iops:.0f}")' <<<"$out"
}

declare -A result
servers=()
bench_server() { # label start-command...
    local label=$1; shift
    port=$((port + 1))
    "$@" &
    local pid=$!; pids+=("$pid")
    wait_port "$port"
    # Pre-fill the job region so reads hit data, not holes, for every server alike.
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$port/bench" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1
    for w in "${workloads[@]}"; do
        result["$label;${w%%;*}"]=$(run_fio "$port" "${w#*;}")
    done
    if [ "${label#engine}" != "$label" ]; then
        result["$label;rss"]=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    servers+=("$label")
}

img() { truncate -s "$size" "$dir/$1.img"; echo "$dir/$1.img"; }

bench_server engine-file   $engine serve --port $((port + 1)) --file "bench:$(img engine)"
bench_server nbdkit-file   nbdkit -f --exit-with-parent -i 127.0.0.1 -p $((port + 1)) file "file=$(img nbdkit)"
f=$(img nbdserver)
printf '[generic]\nlistenaddr = 127.0.0.1\nport = %s\n[bench]\nexportname = %s\n' $((port + 1)) "$f" > "$dir/nbd-server.conf"
bench_server nbd-server    nbd-server -C "$dir/nbd-server.conf" -d
bench_server qemu-nbd-file qemu-nbd -f raw -x bench -b 127.0.0.1 -p $((port + 1)) -t --shared=16 --aio=threads "$(img qemu)"
bench_server engine-memory $engine serve --port $((port + 1)) --memory "bench:$size"
bench_server nbdkit-memory nbdkit -f --exit-with-parent -i 127.0.0.1 -p $((port + 1)) memory "$size"

echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)  runtime ${runtime}s per row"
printf '%-20s' "workload"; for s in "${servers[@]}"; do printf '%18s' "$s"; done; echo
for w in "${workloads[@]}"; do
    n=${w%%;*}
    printf '%-20s' "$n"
    for s in "${servers[@]}"; do read -r bw iops <<<"${result[$s;$n]}"; printf '%18s' "$bw MiB/s $iops"; done; echo
done
echo
echo "ratios (engine / peer, by MiB/s):"
printf '%-20s%14s%14s%14s%14s\n' workload "file/nbdkit" "file/nbd-srv" "file/qemu-nbd" "mem/nbdkit"
for w in "${workloads[@]}"; do
    n=${w%%;*}
    ratio() { python3 -c "a,b=$1,$2; print(f'{a/b:.2f}x' if b else 'n/a')"; }
    e=${result[engine-file;$n]%% *}; m=${result[engine-memory;$n]%% *}
    printf '%-20s%14s%14s%14s%14s\n' "$n" "$(ratio "$e" "${result[nbdkit-file;$n]%% *}")" "$(ratio "$e" "${result[nbd-server;$n]%% *}")" \
        "$(ratio "$e" "${result[qemu-nbd-file;$n]%% *}")" "$(ratio "$m" "${result[nbdkit-memory;$n]%% *}")"
done
echo
echo "engine peak RSS: file $(( ${result[engine-file;rss]} / 1024 )) MiB, memory $(( ${result[engine-memory;rss]} / 1024 )) MiB (memory export holds the 1 GiB written)"
