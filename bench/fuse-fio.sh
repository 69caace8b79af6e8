#!/usr/bin/env bash
# Benchmark: a block device without the nbd driver. The same export is attached as /dev/loopN in two
# ways in one run: through the engine's FUSE attach (bench host "fuse-attach") and through libnbd's
# nbdfuse + losetup --direct-io=on. fio with direct I/O on the loop device: 1 MiB sequential read and
# write (QD 8) and 4 KiB random read (QD 32). Rounds alternate which client goes first; the table shows
# medians over the rounds and the CPU each FUSE server process used per I/O. With --ceiling each round
# also measures our FUSE server over a disk in its own memory (no NBD at all): the cost of the FUSE and
# loop path alone. Needs root, /dev/fuse, loop devices, fio, nbdfuse and nbdkit. A benchmark, not a
# test: the machine's load moves the numbers.
#
#   bench/fuse-fio.sh [--rounds 5] [--runtime 8] [--server nbdkit|engine] [--region 1G] [--connections N] [--ceiling]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5; runtime=8; server=nbdkit; region=1G; connections=; ceiling=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2;;
        --runtime) runtime=$2; shift 2;;
        --server) server=$2; shift 2;;
        --region) region=$2; shift 2;;
        --connections) connections=$2; shift 2;;
        --ceiling) ceiling=1; shift;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (mount and loop devices)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "needs /dev/fuse" >&2; exit 1; }
for t in fio nbdfuse nbdkit losetup fusermount3 python3; do command -v $t >/dev/null || { echo "$t is not installed" >&2; exit 1; }; done

dotnet build bench/NbdPowerShell.Bench -c Release -nologo -v q >/dev/null
engine=bench/NbdPowerShell.Bench/bin/Release/net10.0/NbdPowerShell.Bench
dir=$(mktemp -d /tmp/nbdps-fusebench.XXXXXX)
server_pid=; client_pid=; loop=
cleanup() {
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null && wait "$client_pid" 2>/dev/null || true
    mountpoint -q "$dir/nf" 2>/dev/null && fusermount3 -u "$dir/nf" || true
    "$engine" fuse-cleanup --runtime-dir "$dir/run" --force >/dev/null 2>&1 || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

sock=$dir/nbd.sock
size=$(( $(numfmt --from=iec "$region") + (256 << 20) ))
case $server in
    nbdkit) nbdkit -f --exit-with-parent -U "$sock" memory "$size" & server_pid=$!; uri="nbd+unix:///?socket=$sock";;
    engine) "$engine" serve --port 0 --unix "$sock" --memory "bench:$size" >/dev/null & server_pid=$!; uri="nbd+unix:///bench?socket=$sock";;
    *) echo "--server is nbdkit or engine" >&2; exit 2;;
esac
for _ in $(seq 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
# Reads must hit data on both clients alike: write the job region once.
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$region" >/dev/null 2>&1

jobs=("seq-read-1M-qd8;--rw=read --bs=1M --iodepth=8"
      "seq-write-1M-qd8;--rw=write --bs=1M --iodepth=8"
      "rand-read-4k-qd32;--rw=randread --bs=4k --iodepth=32")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # label device pid: runs every job, appends "label job MiB/s IOPS cpu-µs-per-IO" to results
    local label=$1 dev=$2 pid=$3 job args out t0 t1
    for j in "${jobs[@]}"; do
        job=${j%%;*}; args=${j#*;}
        t0=$(cpu_ticks "$pid")
        out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=libaio $args --size="$region" \
            --runtime="$runtime" --time_based --ramp_time=1 --output-format=json 2>/dev/null)
        t1=$(cpu_ticks "$pid")
        python3 -c '
import json,sys
j=json.loads(sys.stdin.read())["jobs"][0]
bw=(j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576
ios=j["read"]["total_ios"]+j["write"]["total_ios"]
iops=j["read"]["iops"]+j["write"]["iops"]
ticks=int(sys.argv[3]); hz=int(sys.argv[4])
print(sys.argv[1], sys.argv[2], f"{bw:.0f}", f"{iops:.0f}", f"{ticks*1e6/hz/ios:.1f}" if ios else "nan")
' "$label" "$job" $((t1 - t0)) "$(getconf CLK_TCK)" <<<"$out" >> "$dir/results"
    done
}

run_engine() { # [label fuse-attach-arguments...]
    local label=${1:-engine-fuse}; shift || true
    "$engine" fuse-attach ${@:---uri "$uri" ${connections:+--connections $connections}} --runtime-dir "$dir/run" > "$dir/attach.out" 2>&1 &
    client_pid=$!
    for _ in $(seq 300); do grep -q '^READY ' "$dir/attach.out" && break; sleep 0.1; done
    local dev; dev=$(awk '/^READY/ {print $2}' "$dir/attach.out")
    [ -n "$dev" ] || { cat "$dir/attach.out" >&2; exit 1; }
    measure "$label" "$dev" "$client_pid"
    kill -TERM "$client_pid"; wait "$client_pid" || true; client_pid=
}

run_nbdfuse() {
    mkdir -p "$dir/nf"
    nbdfuse ${connections:+-C $connections} "$dir/nf" "$uri" &
    client_pid=$!
    for _ in $(seq 100); do [ -e "$dir/nf/nbd" ] && break; sleep 0.1; done
    loop=$(losetup -f --show --direct-io=on "$dir/nf/nbd")
    measure nbdfuse "$loop" "$client_pid"
    losetup -d "$loop"; loop=
    fusermount3 -u "$dir/nf"; wait "$client_pid" || true; client_pid=
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then run_engine; run_nbdfuse; else run_nbdfuse; run_engine; fi
    [ -z "$ceiling" ] || run_engine engine-memory --memory $(( size >> 20 ))
    echo "round $r done (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores  kernel $(uname -r)  server: $server  rounds: $rounds x ${runtime}s"
python3 - "$dir/results" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
jobs = list(dict.fromkeys(r[1] for r in rows))
def col(label, job, i): return [float(r[i]) for r in rows if r[0] == label and r[1] == job]
print(f"{'workload':<20}{'engine-fuse':>22}{'nbdfuse':>22}{'ratio':>8}{'CPU µs/IO engine':>18}{'nbdfuse':>9}")
for j in jobs:
    e, n = col("engine-fuse", j, 2), col("nbdfuse", j, 2)
    ei, ni = col("engine-fuse", j, 3), col("nbdfuse", j, 3)
    ec, nc = col("engine-fuse", j, 4), col("nbdfuse", j, 4)
    me, mn = statistics.median(e), statistics.median(n)
    print(f"{j:<20}{me:>9.0f} MiB/s {statistics.median(ei):>7.0f}/s{mn:>9.0f} MiB/s {statistics.median(ni):>7.0f}/s"
          f"{me / mn if mn else float('nan'):>7.2f}x{statistics.median(ec):>18.1f}{statistics.median(nc):>9.1f}")
if any(r[0] == "engine-memory" for r in rows):
    print("FUSE+loop path alone (our FUSE server over a disk in its own memory, no NBD):")
    for j in jobs:
        m, mi, mc = col("engine-memory", j, 2), col("engine-memory", j, 3), col("engine-memory", j, 4)
        print(f"{j:<20}{statistics.median(m):>9.0f} MiB/s {statistics.median(mi):>7.0f}/s   CPU {statistics.median(mc):.1f} µs/IO")
print()
print("all runs (MiB/s): " + "; ".join(f"{j} engine {sorted(col('engine-fuse', j, 2))} nbdfuse {sorted(col('nbdfuse', j, 2))}" for j in jobs))
EOF
echo; echo "raw (client job MiB/s IOPS CPU-µs/IO):"; cat "$dir/results"
