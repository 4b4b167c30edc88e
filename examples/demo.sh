#!/usr/bin/env bash
# The main job, on local data: the design's pinata example as a real pipeline.
#
#   bash examples/demo.sh          # builds dkt (release) and runs it in a temp dir
#   KEEP=1 bash examples/demo.sh   # keep the demo directory afterwards
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet -p dtk-cli --manifest-path "$root/Cargo.toml"
dkt="${CARGO_TARGET_DIR:-$root/target}/release/dkt"
work=$(mktemp -d "${TMPDIR:-/tmp}/dkt-demo.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
cd "$work"
# Temporary sources (`dkt source add tests`) are made under $TMPDIR: keep them in the demo dir.
export TMPDIR="$work/tmp"; mkdir -p "$TMPDIR"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
g() { git -c user.name=demo -c user.email=demo@localhost "$@"; }

# A git repository made on the spot, with the sub-directory v1/pitfall.
mkdir -p pinata/v1/pitfall dmg/2245 dmg/2246
cat > pinata/v1/pitfall/pitfall <<'SH'
#!/bin/sh
# A stand-in for pinata's test driver: reports what it was asked to test.
echo "pitfall: testing $*"
SH
chmod +x pinata/v1/pitfall/pitfall
echo "Docker for Mac" > pinata/README.md
(cd pinata && g init -q -b master && g add -A && g commit -qm "pitfall v1")
echo "build 2245" > dmg/2245/Docker.dmg
echo "build 2246" > dmg/2246/Docker.dmg

say dkt init;                                        "$dkt" init
say dkt source add pinata ./pinata;                  "$dkt" source add pinata ./pinata
say dkt source add pitfall pinata --path /v1/pitfall; "$dkt" source add pitfall pinata --path /v1/pitfall
say dkt source add dmg ./dmg;                        "$dkt" source add dmg ./dmg
say "dkt source add tests   # a temporary directory"; "$dkt" source add tests
cat > test.sh <<'SH'
for build in $(ls ${dmg:ROOT}); do
  mkdir -p ${tests:ROOT}/$build
  ${pitfall:ROOT}/pitfall --os=linux --build=$build > ${tests:ROOT}/$build/STDOUT
done
SH
say cat test.sh; cat test.sh
say dkt node run --labels=test --input=dmg,pitfall --output=tests test.sh
mkdir -p .dkt && printf '[worker]\nlabels = ["linux", "test"]\n' > .dkt/config
"$dkt" node run --labels=test --input=dmg,pitfall --output=tests test.sh
node=$("$dkt" --json node list | sed -n 's/.*"id": "\([0-9a-f]\{8\}\)".*/\1/p' | head -1)
say dkt node list;        "$dkt" node list
say dkt node log "$node"; "$dkt" node log "$node"
say dkt source list;      "$dkt" source list

# A new upstream commit and a new build: update, and the node runs on the new inputs.
echo 'echo "pitfall v2: $*"' >> pinata/v1/pitfall/pitfall
(cd pinata && g commit -qam "pitfall v2")
echo "build 2247" > dmg/2247.dmg
say dkt source update;    "$dkt" source update
say dkt node run --labels=test --input=dmg,pitfall --output=tests test.sh
"$dkt" node run --labels=test --input=dmg,pitfall --output=tests test.sh
say dkt node log "$node"; "$dkt" node log "$node"
say dkt source log pitfall; "$dkt" source log pitfall
tests=$("$dkt" --json source list | sed -n 's/.*"latest": "md5:\([0-9a-f]\{8\}\).*/\1/p' | tail -1)
say dkt inspect "tests:$tests"; "$dkt" inspect "tests:$tests"
say dkt verify "tests:$tests";  "$dkt" verify "tests:$tests"
say "git --git-dir .dkt/.git log --oneline   # the audit log is plain git"
git --git-dir .dkt/.git log --oneline
