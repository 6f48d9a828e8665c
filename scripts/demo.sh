#!/usr/bin/env bash
# Sluice's main job on its embedded default: with no database given, start a throw-away
# PostgreSQL (installing it if needed), write to a demo table, stream the changes.
# Pass --seconds N to stop by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The first build compiles every dependency (a few minutes on two cores): cargo's own
# progress says how far it is; later runs start at once. The demo profile optimises
# less than release (Cargo.toml says why); `cargo build --release` is for real loads.
echo "building Sluice (the first time takes a few minutes; cargo shows its progress) ..." >&2
cargo build --profile demo -p sluice
exec "${CARGO_TARGET_DIR:-target}/demo/sluice" demo "$@"
