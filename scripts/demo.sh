#!/usr/bin/env bash
# Sluice's main job on its embedded default: with no database given, start a throw-away
# PostgreSQL (installing it if needed), write to a demo table, stream the changes.
# Pass --seconds N to stop by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The first build compiles every dependency (a few minutes on two cores): cargo's own
# progress says how far it is; later runs start at once.
echo "building Sluice (release) ..." >&2
cargo build --release -p sluice
exec "${CARGO_TARGET_DIR:-target}/release/sluice" demo "$@"
