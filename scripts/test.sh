#!/usr/bin/env bash
# The whole test suite: installs PostgreSQL, wal2json, Redis, NATS (a current build) and a
# Kafka-protocol broker if missing, checks formatting and lints, runs every test (with
# every cargo feature: the Kafka sink builds librdkafka) against real servers that the
# tests start themselves, and fuzzes the pgoutput decoder for a bounded time when a nightly toolchain
# is present.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --tests

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked --quiet
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
# Optional sinks must also build without their features.
cargo check -p sluice-sinks --no-default-features --quiet

# Doc examples first (nextest does not run them), then the suite; its summary closes the run.
cargo test --workspace --all-features --doc --quiet
if [ "${SLUICE_FUZZ_SECONDS:-60}" -gt 0 ] && rustup toolchain list 2>/dev/null | grep -q nightly; then
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
  fi
  echo "fuzzing the pgoutput decoder for ${SLUICE_FUZZ_SECONDS:-60} s" >&2
  (cd fuzz && cargo +nightly fuzz run pgoutput -- -max_total_time="${SLUICE_FUZZ_SECONDS:-60}" 2>&1 | tail -n 3)
fi
cargo nextest run --workspace --all-features --no-fail-fast --cargo-quiet "$@"
