#!/usr/bin/env bash
# What `dkt pull` costs on a project of the size users live at (issue "Sharing a project
# between machines"). Copy A has N nodes (src_i -> node_i -> out_i, a `cp` each, as in
# benches/scale.sh), all run once, pushed to a bare hub; copy B is cloned from the hub and
# makes one change of its own (so that pulling is a real merge, not a fast-forward). A then
# changes K sources, runs the K nodes they feed and pushes. Measured in B: `dkt fetch`
# (the transport, git's), the merge of the K runs (`dkt pull` once fetched), and a no-op
# `dkt pull` beside a no-op `git fetch` of the same hub. Prints a Markdown table on
# stdout; progress goes to stderr.
#
#   benches/pull.sh                # N = 5000, K = 1000
#   N=1000 K=100 benches/pull.sh
#   KEEP=1 DKT=/path/to/dkt benches/pull.sh
#
# Needs bash, git, python3, coreutils and the dkt binary (`cargo build --release -p dtk-cli`,
# or DKT=/path/to/dkt).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DKT=${DKT:-$here/target/release/dkt}
N=${N:-5000}
K=${K:-1000}
JOBS=${JOBS:-2}
KEEP=${KEEP:-0}
[ -x "$DKT" ] || { echo "pull: no dkt binary at $DKT (cargo build --release -p dtk-cli)" >&2; exit 1; }
[ "$K" -le "$N" ] || { echo "pull: K ($K) must not exceed N ($N)" >&2; exit 1; }

log() { echo "pull: $*" >&2; }
now_ns() { date +%s%N; }
secs() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1e9:.6f}")' "$1"; }
median() { python3 -c 'import sys, statistics; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
fmt_t() {
  python3 -c '
import sys
s = float(sys.argv[1])
print(f"{s:.2f} s" if s >= 10 else f"{s * 1000:.1f} ms" if s < 1 else f"{s:.3f} s")' "$1"
}
time_it() {
  local t0 t1
  t0=$(now_ns); "$@" >/dev/null; t1=$(now_ns)
  secs $((t1 - t0))
}

work=$(mktemp -d "${TMPDIR:-/tmp}/dkt-pull-XXXXXX")
cleanup() { [ "$KEEP" = 1 ] && { log "kept: $work"; return; }; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tmp" "$work/a" "$work/b"
export TMPDIR=$work/tmp
git init -q --bare "$work/hub.git"

cd "$work/a"
log "N=$N: copy A: $N sources, $N outputs, $N nodes"
"$DKT" init >/dev/null
for i in $(seq 1 "$N"); do mkdir -p "src_$i" "out_$i"; echo "input $i" > "src_$i/f"; done
{
  echo "sources:"
  for i in $(seq 1 "$N"); do
    echo "  - name: src_$i"
    echo "    location: ./src_$i"
    echo "  - name: out_$i"
    echo "    location: ./out_$i"
  done
  echo "nodes:"
  for i in $(seq 1 "$N"); do
    echo "  - inputs: [src_$i]"
    echo "    outputs: [out_$i]"
    echo "    run: [\"cp -r \${src_$i:ROOT}/. \${out_$i:ROOT}/\"]"
  done
} > pipeline.yml
"$DKT" apply pipeline.yml >/dev/null
log "first pass of A (every node runs once) ..."
"$DKT" run -j "$JOBS" >/dev/null
"$DKT" remote add origin "$work/hub.git" >/dev/null
"$DKT" push >/dev/null

cd "$work/b"
"$DKT" clone "$work/hub.git" . >/dev/null
"$DKT" source freeze "src_$N" >/dev/null   # B's own change: the pull is a merge

cd "$work/a"
log "A changes $K sources and runs the $K nodes they feed ..."
for i in $(seq 1 "$K"); do echo "changed $i" > "src_$i/f"; done
"$DKT" run -j "$JOBS" >/dev/null
"$DKT" push >/dev/null

cd "$work/b"
t_fetch=$(time_it "$DKT" fetch)
t_merge=$(time_it "$DKT" pull)
runs=$(git --git-dir .dkt/.git ls-tree -r --name-only main runs | grep -c '\.json$')
expected=$((N + K))
[ "$runs" -eq "$expected" ] || { echo "pull: B has $runs runs after the pull, expected $expected" >&2; exit 1; }
log "fetch $(fmt_t "$t_fetch"), merge of $K runs $(fmt_t "$t_merge") (B now has $runs runs)"

noop=(); gitf=()
for _ in 1 2 3 4 5; do noop+=("$(time_it "$DKT" pull)"); done
for _ in 1 2 3 4 5; do gitf+=("$(time_it git --git-dir .dkt/.git fetch --quiet origin)"); done
t_noop=$(median "${noop[@]}"); t_git=$(median "${gitf[@]}")
log "no-op pull $(fmt_t "$t_noop"), no-op git fetch $(fmt_t "$t_git") (medians of 5)"

echo "| N nodes | K new runs | \`dkt fetch\` | merge (\`dkt pull\` once fetched) | no-op \`dkt pull\` | no-op \`git fetch\` (transport) |"
echo "|--------:|-----------:|------------:|--------------------------------:|-----------------:|------------------------------:|"
echo "| $N | $K | $(fmt_t "$t_fetch") | $(fmt_t "$t_merge") | $(fmt_t "$t_noop") | $(fmt_t "$t_git") |"
