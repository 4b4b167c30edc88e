#!/usr/bin/env bash
# Side by side: a no-op `dvc repro` and a no-op `dkt run` on the same 100-stage pipeline
# (a chain: stage i copies the output of stage i-1), after both have run it once.
#
#   benches/run_vs_dvc.sh            # STAGES=100 RUNS=5 by default
#
# Needs dvc (`pip install dvc`) and the dkt binary (`cargo build --release -p dtk-cli`,
# or DKT=/path/to/dkt); skips cleanly, with exit status 0, when either is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DKT=${DKT:-$here/target/release/dkt}
STAGES=${STAGES:-100}
RUNS=${RUNS:-5}
command -v dvc >/dev/null 2>&1 || { echo "run_vs_dvc: skipped: dvc is not installed (pip install dvc)"; exit 0; }
[ -x "$DKT" ] || { echo "run_vs_dvc: skipped: no dkt binary at $DKT"; exit 0; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dkt-run-vs-dvc-XXXXXX")
trap 'rm -rf "$work"' EXIT

# The dvc pipeline.
mkdir -p "$work/dvc" && cd "$work/dvc"
git init -q && git config user.email bench@localhost && git config user.name bench
dvc init -q
mkdir -p d0 && echo seed > d0/f
{
  echo "stages:"
  for i in $(seq 1 "$STAGES"); do
    p=$((i - 1))
    echo "  s$i:"
    echo "    cmd: mkdir -p d$i && cp d$p/f d$i/f"
    echo "    deps: [d$p]"
    echo "    outs: [d$i]"
  done
} > dvc.yaml
dvc repro -q >/dev/null

# The same pipeline in dtk.
mkdir -p "$work/dkt" && cd "$work/dkt"
"$DKT" init >/dev/null
mkdir -p d0 && echo seed > d0/f
for i in $(seq 0 "$STAGES"); do mkdir -p "d$i"; "$DKT" source add "d$i" "./d$i" >/dev/null; done
{
  echo "nodes:"
  for i in $(seq 1 "$STAGES"); do
    p=$((i - 1))
    echo "  - inputs: [d$p]"
    echo "    outputs: [d$i]"
    echo "    run: [\"cp \${d$p:ROOT}/f \${d$i:ROOT}/f\"]"
  done
} > pipeline.yml
"$DKT" apply pipeline.yml >/dev/null
"$DKT" run >/dev/null
[ "$("$DKT" run)" = "nothing to run" ] || { echo "dkt run is not a no-op"; exit 1; }

best_ms() { # dir, command...: the best wall time of $RUNS runs, in ms
  local dir=$1; shift
  local best=999999 t0 t1 ms
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N); (cd "$dir" && "$@" >/dev/null); t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    [ "$ms" -lt "$best" ] && best=$ms
  done
  echo "$best"
}
dvc_ms=$(best_ms "$work/dvc" dvc repro -q)
dkt_ms=$(best_ms "$work/dkt" "$DKT" run)
echo "no-op pass over a $STAGES-stage pipeline, best of $RUNS:"
printf '  %-28s %6d ms\n' "dvc repro" "$dvc_ms" "dkt run" "$dkt_ms"
echo "  dkt is $(( dvc_ms / (dkt_ms > 0 ? dkt_ms : 1) ))x faster"
