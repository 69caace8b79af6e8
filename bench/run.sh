#!/usr/bin/env bash
# Benchmark: the engine against nbdkit, nbd-server and qemu-nbd on this machine, in one run, with
# fio's nbd engine (libnbd) over loopback TCP. For every server and workload it prints MiB/s and
# IOPS, our ratio to each peer, and the server's CPU time per GiB moved (user + system time of the
# server process and its children from /proc, over the measured run). With --repeat N every cell
# is the median of N runs, the servers taking turns within each repetition so that drift in the
# machine's speed spreads over all of them. A benchmark, not a test: numbers vary by machine.
#
#   bench/run.sh [--runtime SECONDS] [--repeat N] [--servers a,b,...] [--rows a,b,...] [--size 4G] [--dir DIR]
#                [--baseline BENCH-HOST]
#
# --baseline names another build of bench/NbdPowerShell.Bench (say, of main, for an A/B of a change):
# it adds the servers baseline-file and baseline-memory, and the ratios engine / baseline.
#
# Runtime: each row runs a 1 s warm-up and then RUNTIME seconds, so one repetition of all six
# servers and six rows takes about 36 x (RUNTIME + 3) s plus 10 s per server for the pre-fill:
# with the defaults (--runtime 8 --repeat 3) about 25 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=8; repeat=3; size=4G; dir=${TMPDIR:-/tmp}/nbdps-bench.$$
all_servers=engine-file,nbdkit-file,nbd-server,qemu-nbd-file,engine-memory,nbdkit-memory
servers_arg=$all_servers; rows_arg=; baseline=
while [ $# -gt 0 ]; do
    case $1 in
        --runtime) runtime=$2; shift 2;;
        --repeat) repeat=$2; shift 2;;
        --servers) servers_arg=$2; shift 2;;
        --rows) rows_arg=$2; shift 2;;
        --size) size=$2; shift 2;;
        --dir) dir=$2; shift 2;;
        --baseline) baseline=$(realpath "$2"); shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
for t in fio nbdkit nbd-server qemu-nbd nbdinfo python3; do
    command -v $t >/dev/null || [ -x /usr/sbin/$t ] || [ -x /usr/bin/$t ] || { echo "$t is not installed" >&2; exit 1; }
done
dotnet build bench/NbdPowerShell.Bench -c Release -nologo -v q >/dev/null
engine=bench/NbdPowerShell.Bench/bin/Release/net10.0/NbdPowerShell.Bench
rm -rf "$dir"; mkdir -p "$dir"
results=$dir/results.tsv
: > "$results"
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

# A port the kernel just handed out (never a fixed one: others on this machine use ports too).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$1/bench" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 did not come up" >&2; return 1; }

# name;fio arguments. The job region is 1 GiB of the export so memory backends stay bounded.
# The -4conn rows run four fio jobs, each with its own connection, on the same region.
workloads=(
  "seq-read-1M-qd8;--rw=read --bs=1M --iodepth=8"
  "seq-write-1M-qd8;--rw=write --bs=1M --iodepth=8"
  "rand-read-4k-qd32;--rw=randread --bs=4k --iodepth=32"
  "randrw-64k-qd16;--rw=randrw --bs=64k --iodepth=16"
  "rand-read-4k-qd32-4conn;--rw=randread --bs=4k --iodepth=32 --numjobs=4 --group_reporting"
  "seq-read-1M-qd8-4conn;--rw=read --bs=1M --iodepth=8 --numjobs=4 --group_reporting"
)
if [ -n "$rows_arg" ]; then
    chosen=()
    for w in "${workloads[@]}"; do case ",$rows_arg," in *",${w%%;*},"*) chosen+=("$w");; esac; done
    workloads=("${chosen[@]}")
fi

# user+system (own and reaped children: nbd-server forks one per client) in clock ticks.
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

run_fio() { # pid port seconds workload-args -> "MiB/s IOPS cpu-seconds bytes"
    local pid=$1 port=$2 seconds=$3 args=$4 before after out
    before=$(cpu_ticks "$pid")
    out=$(fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$port/bench" $args --size=1G --runtime="$seconds" \
        --time_based --output-format=json 2>/dev/null)
    sleep 0.3 # let nbd-server reap its per-client children so their time is counted
    after=$(cpu_ticks "$pid")
    python3 -c '
import json,sys,os
text=sys.stdin.read()
j=json.loads(text[text.index("{"):])["jobs"][0]  # fio prints "connected to NBD server" first
bw=(j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576
iops=j["read"]["iops"]+j["write"]["iops"]
moved=j["read"]["io_bytes"]+j["write"]["io_bytes"]
cpu=(int(sys.argv[2])-int(sys.argv[1]))/os.sysconf("SC_CLK_TCK")
print(f"{bw:.0f} {iops:.0f} {cpu:.2f} {moved}")' "$before" "$after" <<<"$out"
}

bench_server() { # rep label start-command...   (PIDFILE=f: the command daemonizes and writes its pid there)
    local rep=$1 label=$2; shift 2
    "$@" &
    local pid=$!
    if [ -n "${PIDFILE:-}" ]; then
        for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
        pid=$(cat "$PIDFILE")
    fi
    pids+=("$pid")
    wait_port "$port"
    # Pre-fill the job region so reads hit data, not holes, for every server alike.
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$port/bench" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1
    for w in "${workloads[@]}"; do
        run_fio "$pid" "$port" 1 "${w#*;}" >/dev/null   # warm-up (JIT, caches, connections)
        read -r bw iops cpu moved <<<"$(run_fio "$pid" "$port" "$runtime" "${w#*;}")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$label" "${w%%;*}" "$bw" "$iops" "$cpu" "$moved" >> "$results"
    done
    if [ "${label#engine}" != "$label" ]; then
        printf '%s\t%s\trss-kib\t%s\t0\t0\t0\n' "$rep" "$label" "$(awk '/VmHWM/ {print $2}' /proc/$pid/status)" >> "$results"
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

img() { rm -f "$dir/$1.img"; truncate -s "$size" "$dir/$1.img"; echo "$dir/$1.img"; }

started=$(date +%s)
for rep in $(seq "$repeat"); do
    for s in ${servers_arg//,/ }; do
        port=$(free_port)
        case $s in
            engine-file) bench_server "$rep" "$s" $engine serve --port $port --file "bench:$(img engine)";;
            nbdkit-file) bench_server "$rep" "$s" nbdkit -f --exit-with-parent -i 127.0.0.1 -p $port file "file=$(img nbdkit)";;
            nbd-server)
                f=$(img nbdserver)
                printf '[generic]\nlistenaddr = 127.0.0.1\nport = %s\n[bench]\nexportname = %s\n' $port "$f" > "$dir/nbd-server.conf"
                rm -f "$dir/nbd-server.pid"
                # -d would serve a single client only, so let it daemonize and track it by pid file.
                PIDFILE=$dir/nbd-server.pid bench_server "$rep" "$s" nbd-server -C "$dir/nbd-server.conf" -p "$dir/nbd-server.pid";;
            qemu-nbd-file) bench_server "$rep" "$s" qemu-nbd -f raw -x bench -b 127.0.0.1 -p $port -t --shared=16 --aio=threads "$(img qemu)";;
            engine-memory) bench_server "$rep" "$s" $engine serve --port $port --memory "bench:$size";;
            baseline-file|baseline-memory)
                [ -n "$baseline" ] || { echo "$s needs --baseline" >&2; exit 2; }
                if [ $s = baseline-file ]; then what=(--file "bench:$(img baseline)"); else what=(--memory "bench:$size"); fi
                bench_server "$rep" "$s" "$baseline" serve --port $port "${what[@]}";;
            nbdkit-memory) bench_server "$rep" "$s" nbdkit -f --exit-with-parent -i 127.0.0.1 -p $port memory "$size";;
            *) echo "unknown server $s (known: $all_servers)" >&2; exit 2;;
        esac
        rm -f "$dir"/*.img
    done
done

echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "runtime ${runtime}s per row after a 1 s warm-up, median of $repeat run(s) per cell, took $(( $(date +%s) - started )) s"
python3 - "$results" "$servers_arg" "${workloads[@]%%;*}" <<'EOF'
import sys, statistics
path, servers, rows = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
cells = {}
for line in open(path):
    rep, server, row, bw, iops, cpu, moved = line.rstrip("\n").split("\t")
    cells.setdefault((server, row), []).append((float(bw), float(iops), float(cpu), float(moved)))
def med(server, row, i):
    v = cells.get((server, row))
    return statistics.median(x[i] for x in v) if v else None
def cpu_per_gib(server, row):
    v = cells.get((server, row))
    return statistics.median(x[2] / (x[3] / 2**30) for x in v if x[3] > 0) if v else None
w = 26
print("\nMiB/s (IOPS), median per cell")
print("workload".ljust(w) + "".join(s.rjust(22) for s in servers))
for r in rows:
    out = r.ljust(w)
    for s in servers:
        bw, iops = med(s, r, 0), med(s, r, 1)
        out += (f"{bw:.0f} ({iops/1000:.1f}k)" if bw is not None else "-").rjust(22)
    print(out)
print("\nserver CPU seconds per GiB moved (user+system), median per cell")
print("workload".ljust(w) + "".join(s.rjust(16) for s in servers))
for r in rows:
    print(r.ljust(w) + "".join((f"{c:.3f}" if (c := cpu_per_gib(s, r)) is not None else "-").rjust(16) for s in servers))
pairs = [("engine-file", "nbdkit-file"), ("engine-file", "nbd-server"), ("engine-file", "qemu-nbd-file"),
         ("engine-memory", "nbdkit-memory"), ("engine-file", "baseline-file"), ("engine-memory", "baseline-memory")]
pairs = [p for p in pairs if p[0] in servers and p[1] in servers]
if pairs:
    print("\nratios, engine / peer by MiB/s (median of the per-repetition ratios)")
    print("workload".ljust(w) + "".join(f"{a.split('-')[1]}/{b}".rjust(24) for a, b in pairs))
    for r in rows:
        out = r.ljust(w)
        for a, b in pairs:
            va, vb = cells.get((a, r)), cells.get((b, r))
            if not va or not vb:
                out += "-".rjust(24); continue
            ratios = [x[0] / y[0] for x, y in zip(va, vb) if y[0] > 0]
            out += f"{statistics.median(ratios):.2f}x".rjust(24)
        print(out)
for s in servers:
    if (s, "rss-kib") in cells:
        print(f"{s} peak RSS: {max(x[0] for x in cells[(s, 'rss-kib')]) / 1024:.0f} MiB")
EOF
