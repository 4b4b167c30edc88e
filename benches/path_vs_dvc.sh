#!/usr/bin/env bash
# Side by side: `dvc add` and `dkt source add` on the same data, then re-checking the
# unchanged tree (`dvc status` / `dkt source update`), then after one same-size edit with
# the mtime put back (which dvc 3.x misses; see shared RELIABILITY.md).
#
#   benches/path_vs_dvc.sh [DATA_DIR]
#
# Without DATA_DIR, a tree of $FILES small files (default 20000) and one $BIG_MIB MiB file
# (default 256) is generated in a temporary directory. Needs dvc (`pip install dvc`) and
# the dkt binary (`cargo build --release -p dtk-cli`, or set DKT=/path/to/dkt); skips
# cleanly, with exit status 0, when either is missing. Uses hyperfine when installed,
# else bash's `time`.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DKT=${DKT:-$here/target/release/dkt}
FILES=${FILES:-20000}
BIG_MIB=${BIG_MIB:-256}
RUNS=${RUNS:-5}

if ! command -v dvc >/dev/null 2>&1; then
    echo "path_vs_dvc: skipped: dvc is not installed (pip install dvc)"
    exit 0
fi
if [ ! -x "$DKT" ]; then
    echo "path_vs_dvc: skipped: no dkt binary at $DKT (cargo build --release -p dtk-cli)"
    exit 0
fi
command -v git >/dev/null 2>&1 || { echo "path_vs_dvc: skipped: git is needed by dvc"; exit 0; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dkt-vs-dvc-XXXXXX")
trap 'rm -rf "$work"' EXIT

data=$work/repo/data
mkdir -p "$work/repo"
if [ $# -ge 1 ]; then
    echo "copying $1 into $data (dvc needs its data inside its repository)"
    cp -a "$1" "$data"
else
    echo "generating $FILES files and a $BIG_MIB MiB file in $data"
    python3 - "$data" "$FILES" "$BIG_MIB" <<'EOF'
import os, random, sys
root, files, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
for i in range(files):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%03d.bin" % (i % 100)), "wb") as f:
        f.write(rng.randbytes(rng.randrange(4097)))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for _ in range(big):
        f.write(rng.randbytes(1 << 20))
EOF
fi

cd "$work/repo"
git init -q
dvc init -q
"$DKT" init >/dev/null
echo ".dkt" >> .git/info/exclude

TIMEFORMAT='%R'
# once LABEL CMD...: run once, print the wall time.
once() {
    local label=$1
    shift
    local t
    t=$( { time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "$label: FAILED: $*"; return 0; }
    printf '  %-34s %8.3f s\n' "$label" "$t"
}
# repeat LABEL CMD...: a command that may run many times (hyperfine, else best of RUNS).
repeat() {
    local label=$1
    shift
    if command -v hyperfine >/dev/null 2>&1; then
        hyperfine --warmup 1 --runs "$RUNS" --style basic -n "$label" "$(printf '%q ' "$@")" 2>&1 |
            grep -E 'Time|Range' | sed 's/^/  /'
    else
        local best=
        for _ in $(seq "$RUNS"); do
            local t
            t=$( { time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "$label: FAILED: $*"; return 0; }
            if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
        done
        printf '  %-34s %8.3f s (best of %s)\n' "$label" "$best" "$RUNS"
    fi
}

echo "data: $(find data -type f | wc -l) files, $(du -sh data | cut -f1)"
echo
echo "first digest of the data"
once "dvc add data" dvc add -q data
once "dkt source add data ./data" "$DKT" source add data ./data
echo
echo "unchanged data, checked again"
repeat "dvc status" dvc status -q
repeat "dkt source update data" "$DKT" source update data
echo
echo "one same-size edit, mtime restored"
victim=$(find data -type f -name 'f000.bin' | head -1)
python3 - "$victim" <<'EOF'
import os, sys
p = sys.argv[1]
st = os.stat(p)
with open(p, "r+b") as f:
    b = f.read(1)
    f.seek(0)
    f.write(bytes([(b[0] ^ 0xff) if b else 0]))
os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
EOF
if dvc status -q >/dev/null 2>&1; then
    echo "  dvc status: reports NO change (missed the edit)"
else
    echo "  dvc status: reports a change"
fi
before=$("$DKT" --json source list 2>/dev/null | tr -d '\n' || true)
once "dkt source update data" "$DKT" source update data
after=$("$DKT" --json source list 2>/dev/null | tr -d '\n' || true)
if [ -n "$before" ] && [ "$before" != "$after" ]; then
    echo "  dkt: recorded a new version"
else
    echo "  dkt: compare \`dkt source log data\` (expected a new version)"
fi
