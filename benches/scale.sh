#!/usr/bin/env bash
# How the metadata store scales with the number of nodes (issue "Store format 3").
# For each N: N path sources src_i (one small file each), N output path sources out_i
# (empty), and N nodes src_i -> node_i -> out_i that copy, all declared in one pipeline
# file. Measures the first `dkt run -j 2` (all N nodes run), a no-op `dkt run` (median of
# 3), the size of .dkt/.git before and after the first pass and after `git gc --aggressive`
# (on a copy), and a forced `dkt node rerun` of one node minus `sh -c true` (medians of
# $RERUNS). Prints a Markdown table on stdout; progress goes to stderr.
#
#   benches/scale.sh                 # N = 10 1000 5000
#   benches/scale.sh 10 1000         # chosen Ns
#   KEEP=1 RERUNS=20 JOBS=2 DKT=/path/to/dkt benches/scale.sh 10
#
# Needs bash, git, python3, coreutils and the dkt binary (`cargo build --release -p dtk-cli`,
# or DKT=/path/to/dkt).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DKT=${DKT:-$here/target/release/dkt}
JOBS=${JOBS:-2}
RERUNS=${RERUNS:-20}
KEEP=${KEEP:-0}
base_tmp=${TMPDIR:-/tmp}
[ $# -gt 0 ] && sizes=("$@") || sizes=(10 1000 5000)
[ -x "$DKT" ] || { echo "scale: no dkt binary at $DKT (cargo build --release -p dtk-cli)" >&2; exit 1; }

log() { echo "scale: $*" >&2; }
now_ns() { date +%s%N; }
# Seconds between two nanosecond stamps, or a nanosecond count, as a decimal.
secs() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1e9:.6f}")' "$1"; }
# The median of the numbers given as arguments.
median() { python3 -c 'import sys, statistics; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
# Human-readable durations (seconds in) and sizes (bytes in).
fmt_t() {
  python3 -c '
import sys
s = float(sys.argv[1])
print(f"{s:.2f} s" if s >= 10 else f"{s * 1000:.1f} ms" if s < 1 else f"{s:.3f} s")' "$1"
}
fmt_b() {
  python3 -c '
import sys
b = float(sys.argv[1])
for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(b) < 1024 or unit == "GiB":
        print(f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}")
        break
    b /= 1024' "$1"
}
size_of() { du -sb "$1" | cut -f1; }
# Wall time of one command in seconds; its output is discarded.
time_it() {
  local t0 t1
  t0=$(now_ns); "$@" >/dev/null; t1=$(now_ns)
  secs $((t1 - t0))
}

work_dirs=()
cleanup() { [ "$KEEP" = 1 ] && { log "kept: ${work_dirs[*]:-}"; return; }; for d in "${work_dirs[@]:-}"; do [ -n "$d" ] && rm -rf "$d"; done; }
trap cleanup EXIT

rows=()
for n in "${sizes[@]}"; do
  work=$(mktemp -d "$base_tmp/dkt-scale-$n-XXXXXX")
  work_dirs+=("$work")
  mkdir -p "$work/tmp" "$work/proj"
  export TMPDIR=$work/tmp   # dkt's (and git's) temporary files stay inside the work dir
  cd "$work/proj"
  log "N=$n: making $n sources, $n outputs and the pipeline file in $work"
  "$DKT" init >/dev/null
  for i in $(seq 1 "$n"); do mkdir -p "src_$i" "out_$i"; echo "input $i" > "src_$i/f"; done
  {
    echo "sources:"
    for i in $(seq 1 "$n"); do
      echo "  - name: src_$i"
      echo "    location: ./src_$i"
      echo "  - name: out_$i"
      echo "    location: ./out_$i"
    done
    echo "nodes:"
    for i in $(seq 1 "$n"); do
      echo "  - inputs: [src_$i]"
      echo "    outputs: [out_$i]"
      echo "    run: [\"cp -r \${src_$i:ROOT}/. \${out_$i:ROOT}/\"]"
    done
  } > pipeline.yml

  # One commit defines everything.
  t_apply=$(time_it "$DKT" apply pipeline.yml)
  log "N=$n: dkt apply: $(fmt_t "$t_apply")"
  size_before=$(size_of .dkt/.git)

  # First pass: every node runs once.
  log "N=$n: first pass (dkt run -j $JOBS) ..."
  t_first=$(time_it "$DKT" run -j "$JOBS")
  for i in $(seq 1 "$n"); do
    [ -f "out_$i/f" ] || { echo "scale: N=$n: out_$i/f missing after the first pass" >&2; exit 1; }
  done
  per_run=$(python3 -c "print($t_first / $n)")
  log "N=$n: first pass: $(fmt_t "$t_first") ($(fmt_t "$per_run") per run)"
  size_after=$(size_of .dkt/.git)

  # Size after an aggressive gc, on a copy so that later passes see the store as dkt left it.
  cp -a .dkt/.git "$work/gc.git"
  t_gc=$(time_it git --git-dir "$work/gc.git" gc --aggressive --quiet)
  size_gc=$(size_of "$work/gc.git")
  rm -rf "$work/gc.git"
  growth=$(python3 -c "print(($size_after - $size_before) / $n)")
  log "N=$n: .dkt/.git $(fmt_b "$size_before") -> $(fmt_b "$size_after"); after gc $(fmt_b "$size_gc") (gc took $(fmt_t "$t_gc"))"

  # No-op pass: nothing changed, nothing runs.
  [ "$("$DKT" run)" = "nothing to run" ] || { echo "scale: N=$n: the second dkt run is not a no-op" >&2; exit 1; }
  noop=()
  for _ in 1 2 3; do noop+=("$(time_it "$DKT" run)"); done
  t_noop=$(median "${noop[@]}")
  log "N=$n: no-op run: $(fmt_t "$t_noop") (median of 3: ${noop[*]})"

  # Forced rerun of one node, minus the cost of spawning a shell.
  id=$("$DKT" --json node list | python3 -c '
import json, sys
print(next(n["id"] for n in json.load(sys.stdin) if n["spec"]["inputs"] == ["src_1"]))')
  rr=(); sh=()
  for _ in $(seq "$RERUNS"); do rr+=("$(time_it "$DKT" node rerun "$id")"); done
  for _ in $(seq "$RERUNS"); do sh+=("$(time_it sh -c true)"); done
  t_rr=$(median "${rr[@]}"); t_sh=$(median "${sh[@]}")
  overhead=$(python3 -c "print($t_rr - $t_sh)")
  log "N=$n: node rerun $id: $(fmt_t "$t_rr") - sh -c true $(fmt_t "$t_sh") = $(fmt_t "$overhead") (medians of $RERUNS)"

  rows+=("| $n | $(fmt_t "$t_first") | $(fmt_t "$per_run") | $(fmt_t "$t_noop") | $(fmt_b "$size_after") | $(fmt_b "$size_gc") | $(fmt_b "$growth") | $(fmt_t "$t_rr") − $(fmt_t "$t_sh") ≈ $(fmt_t "$overhead") | $(fmt_t "$t_apply") |")
  cd "$here"
  [ "$KEEP" = 1 ] || { rm -rf "$work"; }
done

echo "| N nodes | first pass total | per run | no-op run | .dkt/.git after run | after gc --aggressive | growth per run | forced rerun − \`sh -c true\` | \`dkt apply\` |"
echo "|--------:|-----------------:|--------:|----------:|--------------------:|----------------------:|---------------:|-------------------------:|------------:|"
printf '%s\n' "${rows[@]}"
