#!/usr/bin/env bash
# Streaming benchmark: Sluice against pg_recvlogical on the same WAL, in one run.
#
#   bash bench/stream.sh            # all workloads; RUNS=3 rounds each
#
# 1. 1,000,000 rows in 1,000-row transactions (loaded by the reference script
#    ../shared/reference/bench.sh, whose own drain is a warm-up), then RUNS rounds, each
#    draining two slots made at the same point in turn: pg_recvlogical, then Sluice into
#    its file sink (JSON lines, fsync'd). The ratio is taken per round; the median of them
#    is the figure.
# 2. 200,000 single-row transactions from 4 clients (pgbench): the same comparison.
# 3. Commit-to-sink latency p50/p99 at 1,000 and 10,000 rows/s: pgbench at a fixed rate
#    while Sluice streams into its file sink and bench/latency.py tails the file.
# Uses a throw-away PostgreSQL (../shared/reference/start_pg.sh) in $BASE, port $PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
SINGLE=${SINGLE:-200000}
LAT_SECONDS=${LAT_SECONDS:-30}
source bench/common.sh
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Writes a config for pipeline $1 reading publication $2 into $WORK/$1/changes.jsonl.
config() {
  mkdir -p "$WORK/$1"
  { toml_head "$1" "$2" "$3"; printf '[[sinks]]\nname = "out"\ntype = "file"\npath = "changes.jsonl"\n'; } > "$WORK/$1/sluice.toml"
}

# Drains slot sluice_$1 up to LSN $2 with Sluice (`run --until-lsn`, the analogue of
# pg_recvlogical's --endpos; both timings include connecting); prints seconds and checks
# the row count $3.
sluice_drain() {
  local name=$1 end=$2 rows=$3 t0 t1
  t0=$(now)
  "$SLUICE" run -c "$WORK/$name/sluice.toml" --until-lsn "$end" 2>"$WORK/$name/log" || { cat "$WORK/$name/log" >&2; exit 1; }
  t1=$(now)
  local got; got=$(wc -l < "$WORK/$name/changes.jsonl")
  [ "$got" -ge "$rows" ] || { echo "sluice delivered $got of $rows rows" >&2; exit 1; }
  q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
  rm -f "$WORK/$name/changes.jsonl"
  echo "$t1 - $t0" | bc -l
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1)"

# ---- 1. batched transactions -------------------------------------------------
extra=$(for i in $(seq 1 "$RUNS"); do printf "ref_bb%s,sluice_bb%s," "$i" "$i"; done); extra=${extra%,}
line=$(ROWS=$ROWS BATCH=1000 DRAINS=1 EXTRA_SLOTS=$extra KEEP=1 TABLE=bench_batch PUB=bench_batch_pub SLOT=ref_batch \
  bash "$REF/bench.sh" "$CONN")
end=$(sed -n 's/.*end_lsn=\([^ ]*\).*/\1/p' <<<"$line")
ref_times=""; sl_times=""
for i in $(seq 1 "$RUNS"); do
  ref_times="$ref_times $(ref_drain "ref_bb$i" "$end" bench_batch_pub)"
  config "bb$i" bench_batch_pub bench_batch
  sl_times="$sl_times $(sluice_drain "bb$i" "$end" "$ROWS")"
done
report_pairs "$ROWS rows, 1,000-row transactions" "$ROWS" "$ref_times" "$sl_times"
q "DROP PUBLICATION bench_batch_pub; DROP TABLE bench_batch"

# ---- 2. single-row transactions from 4 clients -------------------------------
q "DROP TABLE IF EXISTS bench_single; DROP PUBLICATION IF EXISTS bench_single_pub;
   CREATE TABLE bench_single (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz) WITH (autovacuum_enabled = off);
   CREATE PUBLICATION bench_single_pub FOR TABLE bench_single; CHECKPOINT"
for i in $(seq 1 "$RUNS"); do
  q "SELECT pg_create_logical_replication_slot('ref_single_$i', 'pgoutput')" >/dev/null
  q "SELECT pg_create_logical_replication_slot('sluice_bs$i', 'pgoutput')" >/dev/null
done
echo "INSERT INTO bench_single (payload, n, ts) VALUES (rpad(md5(random()::text), 200, 'x'), 1, clock_timestamp());" > "$WORK/single.sql"
pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -t $((SINGLE / 4)) -f "$WORK/single.sql" postgres >/dev/null
end=$(q "SELECT pg_current_wal_lsn()")
q "CHECKPOINT"
ref_times=""; sl_times=""
for i in $(seq 1 "$RUNS"); do
  ref_times="$ref_times $(ref_drain "ref_single_$i" "$end" bench_single_pub)"
  config "bs$i" bench_single_pub bench_single
  sl_times="$sl_times $(sluice_drain "bs$i" "$end" "$SINGLE")"
done
report_pairs "$SINGLE single-row txns, 4 clients" "$SINGLE" "$ref_times" "$sl_times"

# ---- 3. commit-to-sink latency ----------------------------------------------
# rows/s:rows per transaction. 10,000 single-row commits/s is beyond what PostgreSQL's
# own commit path reaches here (~6k/s with fsync), so that rate uses 10-row transactions.
for spec in 1000:1 10000:10; do
  rate=${spec%:*}; per=${spec#*:}
  echo "INSERT INTO bench_single (payload, n, ts) SELECT rpad(md5(random()::text), 200, 'x'), g, clock_timestamp() FROM generate_series(1, $per) g;" > "$WORK/lat.sql"
  q "TRUNCATE bench_single"
  # A fresh data dir each time: the last run's slot was dropped, and its state would
  # (rightly) report it lost.
  rm -rf "$WORK/lat"
  config lat bench_single_pub bench_single
  "$SLUICE" run -c "$WORK/lat/sluice.toml" 2>"$WORK/lat/log" &
  pid=$!
  until [ "$(q "SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice_lat'")" = t ]; do
    kill -0 "$pid" 2>/dev/null || { echo "sluice stopped before streaming:" >&2; tail -n 5 "$WORK/lat/log" >&2; exit 1; }
    sleep 0.05
  done
  # Warm-up: the first changes after a slot starts wait for the walsender's caches.
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -T 2 -f "$WORK/lat.sql" postgres >/dev/null 2>&1
  warm=$(wc -l < "$WORK/lat/changes.jsonl")
  n=$((rate * LAT_SECONDS))
  python3 bench/latency.py "$WORK/lat/changes.jsonl" "$n" $((LAT_SECONDS + 60)) "$warm" > "$WORK/lat.out" &
  tail_pid=$!
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -t $((n / per / 4)) -f "$WORK/lat.sql" postgres \
    > "$WORK/pgbench.out" 2>&1 || true
  wait $tail_pid || true
  kill -TERM $pid; wait $pid || true
  printf "latency at %5s rows/s (%s-row txns): sluice         %s   (pgbench: %s)\n" "$rate" "$per" "$(cat "$WORK/lat.out")" \
    "$(grep -o 'tps = [0-9.]*' "$WORK/pgbench.out" | head -n 1)"
  q "SELECT pg_drop_replication_slot('sluice_lat')" >/dev/null

  # The same load read by pg_recvlogical (test_decoding, commit timestamps in its output,
  # no fsync): what a minimal consumer sees on this machine at this moment.
  q "SELECT pg_create_logical_replication_slot('ref_lat', 'test_decoding')" >/dev/null
  rm -f "$WORK/ref_lat.out"
  pg_recvlogical -d "$CONN" -S ref_lat --start -F 0 -f "$WORK/ref_lat.out" -o include-timestamp=1 &
  ref_pid=$!
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -T 2 -f "$WORK/lat.sql" postgres >/dev/null 2>&1
  warm=$(grep -c '^COMMIT' "$WORK/ref_lat.out" || true)
  ntx=$((rate / per * LAT_SECONDS))
  # Only COMMIT lines are counted, one per transaction; other lines are skipped as they come.
  python3 bench/latency.py "$WORK/ref_lat.out" "$ntx" $((LAT_SECONDS + 60)) "$(grep -c '' "$WORK/ref_lat.out")" > "$WORK/ref_lat.res" &
  tail_pid=$!
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -t $((ntx / 4)) -f "$WORK/lat.sql" postgres >/dev/null 2>&1 || true
  wait $tail_pid || true
  kill $ref_pid; wait $ref_pid 2>/dev/null || true
  printf "latency at %5s rows/s (%s-row txns): pg_recvlogical %s (per transaction; warm-up %s txns)\n" "$rate" "$per" "$(cat "$WORK/ref_lat.res")" "$warm"
  q "SELECT pg_drop_replication_slot('ref_lat')" >/dev/null
done
q "DROP PUBLICATION bench_single_pub; DROP TABLE bench_single"
