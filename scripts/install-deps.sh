#!/usr/bin/env bash
# Installs what Sluice's demo and tests need on Debian/Ubuntu, when it is missing:
# PostgreSQL (server binaries), the wal2json plugin (cross-checks in tests), openssl,
# redis-server and nats-server. Needs root (or sudo) only if something is missing.
set -euo pipefail

want=()
pg_bindir() {
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
bindir=$(pg_bindir || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then want+=(postgresql postgresql-contrib); fi
command -v openssl >/dev/null || want+=(openssl)
command -v redis-server >/dev/null || want+=(redis-server)
command -v nats-server >/dev/null || want+=(nats-server)
if [ "${1:-}" = "--tests" ]; then
  major=""
  [ -n "$bindir" ] && major=$(basename "$(dirname "$bindir")")
  if [ -z "$major" ] || [ ! -e "/usr/lib/postgresql/$major/lib/wal2json.so" ]; then
    want+=("postgresql-${major:-15}-wal2json")
  fi
  # The HTTPS test's client; the console's browser (driven by Playwright, which uses
  # this Chromium and downloads none).
  command -v curl >/dev/null || want+=(curl)
  command -v chromium >/dev/null || want+=(chromium)
fi
# The API fuzzer (schemathesis), the console tests' browser driver (Playwright) and a
# mainstream client generator (openapi-python-client, to check the API document gives
# typed models), from PyPI, in a virtualenv of their own, pinned.
if [ "${1:-}" = "--tests" ]; then
  tools=${SLUICE_TOOLS:-$HOME/.cache/sluice-tools}
  if ! "$tools/venv/bin/schemathesis" --version 2>/dev/null | grep -q 4.32.5 \
     || ! "$tools/venv/bin/python" -c 'import playwright' 2>/dev/null \
     || ! "$tools/venv/bin/openapi-python-client" --version 2>/dev/null | grep -q 0.29.1; then
    command -v python3 >/dev/null || want+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
    fuzzer=1
  fi
fi
install_fuzzer() {
  [ "${fuzzer:-0}" = 1 ] || return 0
  echo "installing schemathesis, playwright and openapi-python-client into $tools/venv" >&2
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5 playwright==1.65.3 \
    openapi-python-client==0.29.1
}
[ ${#want[@]} -eq 0 ] && { install_fuzzer; exit 0; }

echo "installing: ${want[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The distribution's packages start a cluster of their own; Sluice never uses it.
$sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
install_fuzzer
