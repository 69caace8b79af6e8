#!/usr/bin/env bash
# Benchmark: throughput through the kernel's /dev/nbdX for the same image served by the engine,
# nbd-server and nbdkit (file plugin), each attached with Debian's nbd-client so only the server
# differs. dd with direct I/O, 1 MiB blocks. Needs root and nbd.ko: when they are missing here it
# re-runs itself inside $NBD_VM_RUNNER (or ../shared/tools/nbd-vm-run.sh). A benchmark, not a test.
#
#   bench/kernel-dd.sh [--mib 256] [--rounds 3]
#
# Each round runs every server once, the order rotated from round to round; the table gives each
# server's median and the median of the per-round ratios (one sample in the emulated VM varies by
# a fifth from run to run, and the first server after boot tends to be the slowest).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=256
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --mib) mib=$2; shift 2;;
        --rounds) rounds=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done

if [ "$(id -u)" != 0 ] || [ ! -e /sys/module/nbd ]; then
    runner=${NBD_VM_RUNNER:-$(cd .. && pwd)/shared/tools/nbd-vm-run.sh}
    [ -x "$runner" ] || { echo "needs root with the nbd module, or NBD_VM_RUNNER" >&2; exit 1; }
    dotnet build bench/NbdPowerShell.Bench -c Release -nologo -v q >/dev/null
    echo "running inside $runner (software-emulated VM: absolute numbers are low; compare servers, not machines)"
    exec "$runner" --timeout 1500 -- env HOME=/tmp DOTNET_CLI_HOME=/tmp bash bench/kernel-dd.sh --mib "$mib" --rounds "$rounds"
fi

engine=bench/NbdPowerShell.Bench/bin/Release/net10.0/NbdPowerShell.Bench
[ -x "$engine" ] || { echo "build bench/NbdPowerShell.Bench first" >&2; exit 1; }
dir=$(mktemp -d /tmp/nbdps-dd.XXXXXX)
img=$dir/disk.img
truncate -s $(( (mib + 64) * 1048576 )) "$img"
dev=/dev/nbd0
port=10870
pid=
cleanup() {
    nbd-client -d $dev >/dev/null 2>&1 || true
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# dd's last line ends with the rate ("…, 1.2 s, 218 MB/s"); report MiB/s from bytes and seconds.
rate() { awk -F', ' '/copied/ { split($3, t, " "); printf "%.1f", ($1+0) / t[1] / 1048576 }'; }

declare -A write read
run() { # label command... ; the server must listen on $port with export "bench"
    local label=$1; shift
    port=$((port + 1))
    "$@" &
    pid=$!
    if [ -n "${PIDFILE:-}" ]; then
        for _ in $(seq 100); do [ -s "$PIDFILE" ] && break; sleep 0.2; done
        pid=$(cat "$PIDFILE")
    fi
    for _ in $(seq 300); do nbd-client -l 127.0.0.1 $port >/dev/null 2>&1 && break; sleep 0.2; done
    nbd-client 127.0.0.1 $port $dev -N bench -b 4096 >/dev/null
    # Warm every server up the same way (the engine's JIT is slow under emulation), then measure.
    dd if=/dev/zero of=$dev bs=1M count=64 oflag=direct status=none
    dd if=$dev of=/dev/null bs=1M count=64 iflag=direct status=none
    write[$label]+=" "$(dd if=/dev/urandom of=$dir/src bs=1M count=$mib status=none; \
        dd if=$dir/src of=$dev bs=1M count=$mib oflag=direct conv=fsync 2>&1 | rate)
    echo 3 > /proc/sys/vm/drop_caches
    read[$label]+=" "$(dd if=$dev of=/dev/null bs=1M count=$mib iflag=direct 2>&1 | rate)
    # The data must have arrived intact, whoever served it.
    cmp -n $((mib * 1048576)) $dir/src $dev || { echo "$label: data read back differs" >&2; exit 1; }
    nbd-client -d $dev >/dev/null
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    pid=
    rm -f $dir/src
}

serve() { # one server's turn
    case $1 in
        engine) run engine $engine serve --port $((port + 1)) --file "bench:$img";;
        nbd-server) printf '[generic]\nlistenaddr = 127.0.0.1\nport = %s\nallowlist = true\n[bench]\nexportname = %s\n' \
                $((port + 1)) "$img" > $dir/nbd-server.conf
            rm -f $dir/nbd-server.pid
            PIDFILE=$dir/nbd-server.pid run nbd-server nbd-server -C $dir/nbd-server.conf -p $dir/nbd-server.pid;;
        nbdkit) run nbdkit nbdkit -f -i 127.0.0.1 -p $((port + 1)) -e bench file "file=$img";;
    esac
}
servers=(engine nbd-server nbdkit)
for r in $(seq 0 $((rounds - 1))); do
    for i in 0 1 2; do serve "${servers[$(( (r + i) % 3 ))]}"; done
done

# median of a list of numbers; ratio: median over rounds of engine's figure / this server's
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { paste -d' ' <(tr ' ' '\n' <<< "$1" | grep .) <(tr ' ' '\n' <<< "$2" | grep .) | awk '{ printf "%s ", $2 ? $1 / $2 : 0 }' | median; }

echo
echo "kernel /dev/nbdX throughput, dd 1 MiB blocks, direct I/O, $mib MiB, nbd-client attach; $(uname -r), $(nproc) CPUs"
echo "$rounds rounds, order rotated; MiB/s medians (each round's figures in brackets), ratios are medians of per-round ratios"
printf '%-12s %12s %12s %14s %14s\n' server "write MiB/s" "read MiB/s" "ours/this wr" "ours/this rd"
for s in "${servers[@]}"; do
    printf '%-12s %12s %12s %14s %14s   [wr%s; rd%s]\n' "$s" "$(median <<< "${write[$s]}")" "$(median <<< "${read[$s]}")" \
        "$(printf '%.2fx' "$(ratio "${write[engine]}" "${write[$s]}")")" \
        "$(printf '%.2fx' "$(ratio "${read[engine]}" "${read[$s]}")")" "${write[$s]}" "${read[$s]}"
done
