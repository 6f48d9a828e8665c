#!/usr/bin/env bash
# Sluice's main job on its embedded default: with no database given, start a throw-away
# PostgreSQL (installing it if needed), write to a demo table, stream the changes.
# Pass --seconds N to stop by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo run --release --quiet -p sluice -- demo "$@"
