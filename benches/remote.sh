#!/usr/bin/env bash
# Runs through the PostgreSQL run queue (issue "Workers on other machines").
#
# 1. Throughput: N trivial nodes (`true`, one shared path input, one path output each)
#    run once locally (`dkt run -j WORKERS`), then, in a fresh copy of the same project,
#    through the queue with WORKERS workers (`dkt worker -j 1` each, all on this machine)
#    and `dkt run -j 64`. The per-run overhead of the queue is (remote - local) / N.
# 2. Idle cost: IDLE workers wait on the queue for IDLE_SECS seconds; the CPU time of
#    every PostgreSQL process over that window, as a share of one core.
#
#   benches/remote.sh                      # N=1000 WORKERS=4 IDLE=50 IDLE_SECS=60
#   N=200 IDLE=10 IDLE_SECS=20 benches/remote.sh
#   N=0 benches/remote.sh                   # the idle cost only
#
# Needs PostgreSQL (Debian package postgresql; run as root it starts the server as the
# `postgres` user), git, python3 and the dkt binary (`cargo build --release -p dtk-cli`,
# or DKT=/path/to/dkt). Everything listens on 127.0.0.1 and is removed at the end.
# Prints a Markdown table on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DKT=${DKT:-$here/target/release/dkt}
N=${N:-1000}
WORKERS=${WORKERS:-4}
IDLE=${IDLE:-50}
IDLE_SECS=${IDLE_SECS:-60}
[ -x "$DKT" ] || { echo "remote: no dkt binary at $DKT (cargo build --release -p dtk-cli)" >&2; exit 1; }
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/postgres" ] || { echo "remote: PostgreSQL is needed (apt-get install postgresql)" >&2; exit 1; }

log() { echo "remote: $*" >&2; }
now_ns() { date +%s%N; }
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -n "${pg_pid:-}" ] && kill -INT "$pg_pid" 2>/dev/null && sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL of our own, password auth.
pw=bench-password
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$work/pg"; printf %s "$pw" > "$work/pg/pw"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown -R postgres "$work/pg"; as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$bin/initdb" -D "$work/pg/data" -U dkt --pwfile="$work/pg/pw" --auth=scram-sha-256 --no-sync >/dev/null
"${as_pg[@]}" "$bin/postgres" -D "$work/pg/data" -p "$port" -k "$work/pg" \
  -c listen_addresses=127.0.0.1 -c max_connections=300 >"$work/pg.log" 2>&1 &
pg_pid=$!
until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.2; done
url="postgres://dkt@127.0.0.1:$port/postgres"
export PGPASSWORD=$pw

# The project: N nodes data -> node_i -> o_i.
make_project() {
  local dir=$1
  mkdir -p "$dir/data"; echo data > "$dir/data/d.txt"
  {
    echo "sources:"; echo "  - name: data"; echo "    location: ./data"
    for i in $(seq 1 "$N"); do echo "  - name: o$i"; done
    echo "nodes:"
    for i in $(seq 1 "$N"); do
      echo "  - inputs: [data]"; echo "    outputs: [o$i]"; echo "    run: [\"true # $i\"]"
    done
  } > "$dir/pipeline.yml"
  (cd "$dir" && "$DKT" init --no-signing-key >/dev/null && "$DKT" apply pipeline.yml >/dev/null)
}

local_s=0; remote_s=0
if [ "$N" -gt 0 ]; then
log "local: $N nodes, dkt run -j $WORKERS"
make_project "$work/local"
t0=$(now_ns); (cd "$work/local" && "$DKT" run -j "$WORKERS" >/dev/null); t1=$(now_ns)
local_s=$(python3 -c "print(($t1 - $t0) / 1e9)")

log "queue: $N nodes, $WORKERS workers, dkt run -j 64"
make_project "$work/remote"
printf '\n[queue]\nurl = "%s"\n' "$url" >> "$work/remote/.dkt/config"
for w in $(seq 1 "$WORKERS"); do
  mkdir -p "$work/w$w"
  "$DKT" worker --queue "$url" --labels linux -j 1 --dir "$work/w$w" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
t0=$(now_ns); (cd "$work/remote" && "$DKT" run -j 64 >/dev/null); t1=$(now_ns)
remote_s=$(python3 -c "print(($t1 - $t0) / 1e9)")
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${pids[@]}" 2>/dev/null || true
pids=()
fi

log "idle: $IDLE workers for $IDLE_SECS s"
for w in $(seq 1 "$IDLE"); do
  mkdir -p "$work/i$w"
  "$DKT" worker --queue "$url" --labels idle -j 1 --dir "$work/i$w" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 5
# CPU ticks (utime + stime) of every process of the server (backends that ended in the
# window are not counted; idle workers keep theirs).
pg_ticks() {
  python3 - "$pg_pid" <<'EOF'
import os, sys
root = int(sys.argv[1])
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            kids[int(p)] = (int(f[1]), int(f[11]) + int(f[12]))
        except OSError:
            pass
# The server and all its descendants (the postmaster may run under runuser).
tree = {root}
grown = True
while grown:
    grown = False
    for pid, (ppid, _) in kids.items():
        if ppid in tree and pid not in tree:
            tree.add(pid)
            grown = True
print(sum(ticks for pid, (_, ticks) in kids.items() if pid in tree))
EOF
}
a=$(pg_ticks); sleep "$IDLE_SECS"; b=$(pg_ticks)
hz=$(getconf CLK_TCK)
idle_pct=$(python3 -c "print(100 * ($b - $a) / $hz / $IDLE_SECS)")

python3 - "$N" "$WORKERS" "$local_s" "$remote_s" "$IDLE" "$IDLE_SECS" "$idle_pct" <<'EOF'
import sys
n, w = int(sys.argv[1]), int(sys.argv[2])
local, remote = float(sys.argv[3]), float(sys.argv[4])
idle, secs, pct = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
print("| measure | value |")
print("|---|---|")
if n > 0:
    print(f"| {n} trivial runs, local (`dkt run -j {w}`) | {local:.1f} s ({1000 * local / n:.1f} ms a run) |")
    print(f"| {n} trivial runs through the queue, {w} workers | {remote:.1f} s ({n / remote:.0f} runs/s, {1000 * remote / n:.1f} ms a run) |")
    print(f"| queue overhead per run (remote - local) | {1000 * (remote - local) / n:.1f} ms |")
print(f"| PostgreSQL CPU with {idle} idle workers ({secs} s) | {pct:.2f} % of one core |")
EOF
