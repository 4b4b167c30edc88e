#!/usr/bin/env bash
# The README's test command: install what the tests need, then run every test.
#
#   bash scripts/test.sh                 # install what is missing, then cargo test (all features)
#   bash scripts/test.sh --no-install    # only check that everything is there, then test
#   bash scripts/test.sh --install-only  # install what is missing, run nothing
#   bash scripts/test.sh -- -p dtk-cli   # extra arguments go to `cargo test`
#
# What it installs when missing (each only if its command or module is absent):
# - Debian packages: git (also `git daemon`, the git:// server), graphviz (`dot`), python3
#   and pip, curl, docker-registry (the CNCF reference OCI registry), skopeo (pushes test
#   images into it) and openssh-server (`/usr/sbin/sshd`, the server of the git kind's ssh
#   test; it brings the `ssh` client and `ssh-keygen` too), postgresql (the remote run
#   queue's tests start servers of their own with `initdb` in temporary directories, as the
#   unprivileged `postgres` user; openssl makes the test CA of its TLS test), chromium and
#   chromium-driver (the dashboard's browser tests drive headless Chromium through
#   WebDriver), bubblewrap (`bwrap`, the sandbox of `sandbox: true` nodes and `--sandbox`;
#   it needs user namespaces when not run as root), strace (what a sandboxed run opened);
# - PyPI packages: moto[server] (an S3-compatible server), prov and in-toto-attestation (the
#   reference consumers of the provenance exports), cryptography (the test token service and
#   the test CA of the HTTPS git server), blake3 and rfc8785 (the independent verifier of
#   tests/verifier, written from docs/format.md alone), securesystemslib (verifies the
#   signed DSSE envelope of `dkt inspect --format slsa --sign`).
# Debian packages need root (or sudo). Every server the tests use is started by the tests
# themselves, on 127.0.0.1, and stopped with them; no test sends traffic anywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
run=1
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --install-only) run=0 ;;
    --) shift; cargo_args=("$@"); break ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

missing_apt=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing_apt+=("$2"); }
need_cmd git git
need_cmd dot graphviz
need_cmd python3 python3
need_cmd curl curl
need_cmd openssl openssl
need_cmd docker-registry docker-registry
need_cmd skopeo skopeo
need_cmd chromium chromium
need_cmd chromedriver chromium-driver
need_cmd bwrap bubblewrap
need_cmd strace strace
[ -x /usr/sbin/sshd ] || missing_apt+=(openssh-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing_apt+=(postgresql)
python3 -m pip --version >/dev/null 2>&1 || missing_apt+=(python3-pip)

if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "$install" = 0 ]; then
    echo "test.sh: missing Debian packages: ${missing_apt[*]}" >&2; exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
      echo "test.sh: need root (or sudo) to install: ${missing_apt[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "test.sh: installing Debian packages: ${missing_apt[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing_apt[@]}" >/dev/null
fi

pip_install() {
  # A Debian-managed python refuses user installs without this flag (PEP 668).
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
missing_pip=()
python3 -c 'import prov' 2>/dev/null || missing_pip+=(prov)
python3 -c 'import in_toto_attestation' 2>/dev/null || missing_pip+=(in-toto-attestation)
python3 -c 'import cryptography' 2>/dev/null || missing_pip+=(cryptography)
python3 -c 'import blake3' 2>/dev/null || missing_pip+=(blake3)
python3 -c 'import rfc8785' 2>/dev/null || missing_pip+=(rfc8785)
python3 -c 'import securesystemslib' 2>/dev/null || missing_pip+=(securesystemslib)
command -v moto_server >/dev/null 2>&1 || missing_pip+=('moto[server]')
if [ ${#missing_pip[@]} -gt 0 ]; then
  if [ "$install" = 0 ]; then
    echo "test.sh: missing Python packages: ${missing_pip[*]}" >&2; exit 1
  fi
  echo "test.sh: installing Python packages: ${missing_pip[*]}" >&2
  pip_install "${missing_pip[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash   # make new scripts visible on PATH
  hash -r
  command -v moto_server >/dev/null || {
    echo "test.sh: moto_server is still not on PATH after installing moto[server]" >&2; exit 1; }
fi

[ "$run" = 1 ] || exit 0

# Tests send traffic to loopback only. As root (CI), they run in a network namespace of
# their own whose only interface is loopback, so a test that tried to reach any other
# address would fail at once rather than pass on a machine that happens to be online.
# DKT_TEST_NETWORK=host runs them in the machine's namespace instead.
cargo fetch --quiet
if [ "$(id -u)" = 0 ] && [ "${DKT_TEST_NETWORK:-}" != host ] &&
   command -v unshare >/dev/null && command -v ip >/dev/null &&
   unshare -n true 2>/dev/null; then
  echo "test.sh: running the tests in a network namespace with loopback only" >&2
  exec unshare -n bash -c 'ip link set lo up && exec cargo test --offline "$@"' \
    bash --workspace --all-features "${cargo_args[@]}"
fi
exec cargo test --workspace --all-features "${cargo_args[@]}"
