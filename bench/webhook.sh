#!/usr/bin/env bash
# Webhook benchmark: throughput and latency into a local receiver that fails 1% of
# requests, at 16, 64 and 256 concurrent requests; and the engine's own overhead against
# a target that acknowledges at once (crates/sluice-delivery/examples/overhead.rs).
#
#   bash bench/webhook.sh        # RUNS=3 per concurrency (median reported)
#   ONLY=outbox bash bench/webhook.sh   # section 4 alone
#
# 1. ROWS rows inserted in 1,000-row transactions while Sluice streams them to the
#    receiver (crates/sluice-testkit/src/bin/sluice-webhook-receiver.rs): accepted
#    records/s between the first and the last accepted request.
# 2. RATE rows/s for LAT_SECONDS (pgbench): commit-to-receipt p50/p99 at each concurrency.
# 3. The engine alone: records/s into an instant target vs a plain read of the same log.
# 4. A Debezium-layout outbox table (ROWS rows, 64 in flight, no failures), with and
#    without delete_delivered: records/s, and with it the seconds from the last accepted
#    request until the table is empty; CPU seconds of Sluice and of PostgreSQL's
#    walsender and the cleaner's connection over the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-100000}
RATE=${RATE:-1000}
LAT_SECONDS=${LAT_SECONDS:-15}
FAIL=${FAIL:-0.01}
source bench/common.sh
cargo build --release --quiet -p sluice-testkit --bin sluice-webhook-receiver
RECV=$ROOT/target/release/sluice-webhook-receiver
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-webhook.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
q "DROP TABLE IF EXISTS wh; CREATE TABLE wh (id bigserial PRIMARY KEY, v int, pad text)"
q "DROP PUBLICATION IF EXISTS wh_pub; CREATE PUBLICATION wh_pub FOR TABLE wh"
echo "INSERT INTO wh (v, pad) VALUES (1, repeat('x', 100));" > "$WORK/insert.sql"
# What `one` streams and what it runs once the receiver has everything.
TABLE=wh; PUB=wh_pub; SINK_EXTRA=""; AFTER=true

# one NAME CONCURRENCY EXPECT LOAD...: the receiver's figures while LOAD runs.
one() {
  local name=$1 conc=$2 expect=$3; shift 3
  mkdir -p "$WORK/$name"
  "$RECV" "$WORK/$name/url" "$expect" "$FAIL" > "$WORK/$name/figures" &
  local rpid=$!; PIDS+=("$rpid")
  while [ ! -s "$WORK/$name/url" ]; do sleep 0.05; done
  { toml_head "$name" "$PUB" "$TABLE"; printf 'snapshot = "never"\n'
    printf '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "%s/hook"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n%s\n' "$(cat "$WORK/$name/url")" "$SINK_EXTRA"
    printf '[sinks.delivery]\nconcurrency = %s\nretry_initial_ms = 50\nretry_max_ms = 1000\n' "$conc"; } > "$WORK/$name/sluice.toml"
  "$SLUICE" run -c "$WORK/$name/sluice.toml" 2>"$WORK/$name/log" &
  local spid=$!; PIDS+=("$spid")
  until grep -q "source: streaming" "$WORK/$name/log"; do sleep 0.1; done
  "$@"
  wait "$rpid"
  $AFTER
  kill "$spid"; wait "$spid" 2>/dev/null || true
  q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
  cat "$WORK/$name/figures"
}
backlog() { for _ in $(seq 1 $((ROWS / 1000))); do echo "INSERT INTO wh (v, pad) SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g;"; done | psql -d "$CONN" -X -q >/dev/null; }
paced() { pgbench -h "$BASE" -p "$PORT" -U postgres -n -f "$WORK/insert.sql" -R "$RATE" -T "$LAT_SECONDS" postgres >"$WORK/pgbench.log" 2>&1 || { cat "$WORK/pgbench.log" >&2; exit 1; }; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1), ${FAIL} of requests failing"
if [ "${ONLY:-}" != outbox ]; then
for c in 16 64 256; do
  rates=(); p50=(); p99=()
  for i in $(seq 1 "$RUNS"); do
    r=$(one "wht_${c}_$i" "$c" "$ROWS" backlog); rates+=("$(echo "$r" | field records_per_s)")
    l=$(one "whl_${c}_$i" "$c" "$((RATE * LAT_SECONDS * 9 / 10))" paced)
    p50+=("$(echo "$l" | field latency_ms_p50)"); p99+=("$(echo "$l" | field latency_ms_p99)")
  done
  printf "concurrency %3s: %7.0f records/s (runs: %s)   at %s rows/s: p50 %s ms (runs: %s), p99 %s ms (runs: %s)\n" \
    "$c" "$(printf "%s\n" "${rates[@]}" | median)" "${rates[*]}" "$RATE" \
    "$(printf "%s\n" "${p50[@]}" | median)" "${p50[*]}" "$(printf "%s\n" "${p99[@]}" | median)" "${p99[*]}"
done
for b in 1 16; do
  for i in $(seq 1 "$RUNS"); do cargo run --release --quiet -p sluice-delivery --example overhead -- 1000000 "$b"; done
done
fi

q "DROP TABLE IF EXISTS whob; CREATE TABLE whob (id bigserial PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb)"
q "DROP PUBLICATION IF EXISTS whob_pub; CREATE PUBLICATION whob_pub FOR TABLE whob"
TABLE=whob; PUB=whob_pub; SAVED_FAIL=$FAIL; FAIL=0
outbox_backlog() { for _ in $(seq 1 $((ROWS / 1000))); do echo "INSERT INTO whob (aggregatetype, aggregateid, type, payload) SELECT 'order', 'o-' || (g % 500), 'created', jsonb_build_object('n', g) FROM generate_series(1, 1000) g;"; done | psql -d "$CONN" -X -q >/dev/null; }
# Seconds from the receiver's last record until the cleaner has emptied the table.
emptied() { local t0; t0=$(date +%s.%N); until [ "$(q 'SELECT count(*) FROM whob')" = 0 ]; do sleep 0.05; done; echo "emptied_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" >> "$WORK/emptied"; }
# CPU seconds of the running Sluice ($spid, from `one`) and of the server processes
# still connected (the walsender; the cleaner's connection).
ticks() { awk -v hz="$(getconf CLK_TCK)" '{ s += ($14 + $15) / hz } END { printf "%.1f", s }' "$@" 2>/dev/null; }
cpu() {
  local pids mode=$1
  pids=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type IN ('walsender', 'client backend') AND pid <> pg_backend_pid()")
  echo "sluice_cpu_s=$(ticks "/proc/$spid/stat") pg_cpu_s=$(ticks $(printf '/proc/%s/stat ' $pids))" >> "$WORK/cpu_$mode"
}
emptied_cpu() { emptied; cpu "$1"; }
# The two modes alternate, run by run, so drift on a shared machine hits both alike.
: > "$WORK/emptied"; : > "$WORK/cpu_keep"; : > "$WORK/cpu_delete"
keep=(); del=(); ratio=()
echo "== outbox section: $ROWS rows, 64 in flight, no failures, $RUNS runs per mode"
for i in $(seq 1 "$RUNS"); do
  for mode in keep delete; do
    SINK_EXTRA=$'tables = []\noutbox_tables = ["public.whob"]'
    if [ "$mode" = delete ]; then SINK_EXTRA+=$'\ndelete_delivered = true'; AFTER="emptied_cpu $mode"; else AFTER="cpu $mode"; fi
    q "TRUNCATE whob" >/dev/null
    r=$(one "whob_${mode}_$i" 64 "$ROWS" outbox_backlog | field records_per_s)
    if [ "$mode" = keep ]; then keep+=("$r"); else del+=("$r"); ratio+=("$(awk -v a="$r" -v b="${keep[-1]}" 'BEGIN { printf "%.2f", a / b }')"); fi
  done
done
printf "outbox, rows kept:        %7.0f records/s (runs: %s); CPU s Sluice %s, PostgreSQL %s\n" \
  "$(printf "%s\n" "${keep[@]}" | median)" "${keep[*]}" "$(field sluice_cpu_s < "$WORK/cpu_keep" | tr '\n' ' ')" "$(field pg_cpu_s < "$WORK/cpu_keep" | tr '\n' ' ')"
printf "outbox, delete_delivered: %7.0f records/s (runs: %s); CPU s Sluice %s, PostgreSQL %s\n" \
  "$(printf "%s\n" "${del[@]}" | median)" "${del[*]}" "$(field sluice_cpu_s < "$WORK/cpu_delete" | tr '\n' ' ')" "$(field pg_cpu_s < "$WORK/cpu_delete" | tr '\n' ' ')"
e=$(field emptied_s < "$WORK/emptied" | tr '\n' ' ')
printf "delete/keep records/s per pair: median %s (runs: %s); table empty %s s after the last delivery (runs: %s)\n" \
  "$(printf "%s\n" "${ratio[@]}" | median)" "${ratio[*]}" "$(echo $e | tr ' ' '\n' | median)" "$e"
FAIL=$SAVED_FAIL
