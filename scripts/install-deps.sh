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
fi
[ ${#want[@]} -eq 0 ] && exit 0

echo "installing: ${want[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The distribution's packages start a cluster of their own; Sluice never uses it.
$sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
