#!/usr/bin/env bash
# Delivery benchmark: the embedded log, the Redis sink and SSE, against pg_recvlogical on
# the same WAL, in one run.
#
#   bash bench/deliver.sh          # RUNS=3 drains each (median reported)
#
# 1. ROWS rows in 1,000-row transactions, then RUNS rounds, each draining three slots
#    created at the same point, in turn: pg_recvlogical, Sluice into its log only (an SSE
#    sink, no client), Sluice into Redis (the run ends when Redis has every row). The
#    ratio is taken per round (the machine's load shifts between rounds, not within one);
#    the median of the per-round ratios is reported.
# 2. Commit-to-Redis and commit-to-SSE-client latency p50/p99 at 1,000 and 10,000 rows/s
#    (pgbench at a fixed rate; bench/deliver_latency.py receives).
# 3. 1,000 concurrent SSE clients at CLIENT_RATE rows/s: latency over all their events
#    (received by sluice-sse-probe: one thread going round the sockets with epoll; until
#    2026-12-05 a thread per client, until 2026-12-04 the Python receiver, both of which
#    measured much of themselves on the same two cores).
# SKIP_THROUGHPUT=1 runs only the latency part, SKIP_LATENCY=1 only the throughput part.
# Uses a throw-away PostgreSQL (../shared/reference/start_pg.sh) and a private redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
LAT_SECONDS=${LAT_SECONDS:-30}
CLIENTS=${CLIENTS:-1000}
CLIENT_RATE=${CLIENT_RATE:-20}
REDIS_PORT=${REDIS_PORT:-56379}
source bench/common.sh
cargo build --release --quiet -p sluice-testkit --bin sluice-sse-probe
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-deliver.XXXXXX)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --dir "$WORK" --logfile "$WORK/redis.log" --pidfile "$WORK/redis.pid"
trap 'kill $(cat "$WORK/redis.pid") 2>/dev/null || true; rm -rf "$WORK"' EXIT
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# config NAME PUBLICATION TABLE SINK: SINK is "sse" or "redis".
config() {
  mkdir -p "$WORK/$1"
  { toml_head "$1" "$2" "$3"; printf 'snapshot = "never"\n[server]\nlisten = "127.0.0.1:0"\nauth = "none"\n'; } > "$WORK/$1/sluice.toml"
  case $4 in
    sse) printf '[[sinks]]\nname = "feed"\ntype = "sse"\n' >> "$WORK/$1/sluice.toml" ;;
    redis) printf '[[sinks]]\nname = "cache"\ntype = "redis"\nurl = "redis://127.0.0.1:%s"\nprefix = "b:"\n' "$REDIS_PORT" >> "$WORK/$1/sluice.toml" ;;
  esac
}

drain() { # NAME END: seconds for `sluice run --until-lsn END` (with the sinks' drain)
  local t0 t1
  t0=$(now)
  "$SLUICE" run -c "$WORK/$1/sluice.toml" --until-lsn "$2" 2>"$WORK/$1/log" || { cat "$WORK/$1/log" >&2; exit 1; }
  t1=$(now)
  q "SELECT pg_drop_replication_slot('sluice_$1')" >/dev/null
  echo "$t1 - $t0" | bc -l
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1), $(redis-server --version | cut -d' ' -f3)"

# ---- 1. throughput -----------------------------------------------------------------
if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
extra=$(for i in $(seq 1 "$RUNS"); do printf "ref_dv%s,sluice_dl%s,sluice_dr%s," "$i" "$i" "$i"; done); extra=${extra%,}
# The reference script's own drain (one slot) warms the caches; the rounds follow.
line=$(ROWS=$ROWS BATCH=1000 DRAINS=1 EXTRA_SLOTS=$extra KEEP=1 TABLE=bench_deliver PUB=bench_deliver_pub SLOT=ref_deliver \
  bash "$REF/bench.sh" "$CONN")
end=$(sed -n 's/.*end_lsn=\([^ ]*\).*/\1/p' <<<"$line")
ref_times=""; log_times=""; redis_times=""
for i in $(seq 1 "$RUNS"); do
  ref_times="$ref_times $(ref_drain "ref_dv$i" "$end" bench_deliver_pub)"
  config "dl$i" bench_deliver_pub bench_deliver sse
  log_times="$log_times $(drain "dl$i" "$end")"
  rm -rf "$WORK/dl$i"
  rcli FLUSHALL >/dev/null
  config "dr$i" bench_deliver_pub bench_deliver redis
  redis_times="$redis_times $(drain "dr$i" "$end")"
  keys=$(rcli DBSIZE)
  [ "$keys" -ge "$ROWS" ] || { echo "redis holds $keys keys of $ROWS rows" >&2; tail "$WORK/dr$i/log" >&2; exit 1; }
  rm -rf "$WORK/dr$i"
done
report_pairs "$ROWS rows into the log (fsync'd)" "$ROWS" "$ref_times" "$log_times"
report_pairs "$ROWS rows into Redis" "$ROWS" "$ref_times" "$redis_times"
q "DROP PUBLICATION bench_deliver_pub; DROP TABLE bench_deliver"
fi

# ---- 2. and 3. latency ---------------------------------------------------------------
[ "${SKIP_LATENCY:-0}" = 1 ] && exit 0
q "DROP TABLE IF EXISTS bench_lat; DROP PUBLICATION IF EXISTS bench_lat_pub;
   CREATE TABLE bench_lat (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz) WITH (autovacuum_enabled = off);
   CREATE PUBLICATION bench_lat_pub FOR TABLE bench_lat"

# latency SINK RATE PER [CLIENTS]: one window at RATE rows/s in PER-row transactions.
latency() {
  local sink=$1 rate=$2 per=$3 clients=${4:-1} pid addr n tail_pid
  echo "INSERT INTO bench_lat (payload, n, ts) SELECT rpad(md5(random()::text), 200, 'x'), g, clock_timestamp() FROM generate_series(1, $per) g;" > "$WORK/lat.sql"
  q "TRUNCATE bench_lat"; rcli FLUSHALL >/dev/null
  rm -rf "$WORK/lat"; config lat bench_lat_pub bench_lat "$sink"
  "$SLUICE" run -c "$WORK/lat/sluice.toml" 2>"$WORK/lat/log" &
  pid=$!
  until grep -q "source: streaming" "$WORK/lat/log"; do
    kill -0 "$pid" 2>/dev/null || { echo "sluice stopped before streaming:" >&2; tail -n 5 "$WORK/lat/log" >&2; exit 1; }
    sleep 0.05
  done
  addr=$(grep -o 'addr=[0-9.:]*' "$WORK/lat/log" | head -n 1 | cut -d= -f2)
  # Warm-up: the first changes after a slot starts wait for the walsender's caches.
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -T 2 -f "$WORK/lat.sql" postgres >/dev/null 2>&1
  n=$((rate * LAT_SECONDS))
  if [ "$sink" = sse ]; then
    if [ "$clients" -gt 1 ]; then
      # Many clients: a compiled receiver on one epoll thread (one Python process going
      # round 1,000 sockets measures mostly itself).
      "$ROOT/target/release/sluice-sse-probe" "$addr" feed "$n" $((LAT_SECONDS + 60)) "$clients" > "$WORK/lat.out" 2>"$WORK/lat.err" &
    else
      python3 bench/deliver_latency.py sse "$addr" feed "$n" $((LAT_SECONDS + 60)) "$clients" > "$WORK/lat.out" 2>"$WORK/lat.err" &
    fi
  else
    python3 bench/deliver_latency.py redis "$REDIS_PORT" "b:postgres.public.bench_lat." "$n" $((LAT_SECONDS + 60)) > "$WORK/lat.out" 2>"$WORK/lat.err" &
  fi
  tail_pid=$!
  until grep -q ready "$WORK/lat.err" 2>/dev/null; do
    kill -0 "$tail_pid" 2>/dev/null || { echo "the receiver stopped:" >&2; cat "$WORK/lat.err" >&2; exit 1; }
    sleep 0.05
  done
  pgbench -h "$BASE" -p "$PORT" -U postgres -n -c 4 -j 2 -R $((rate / per)) -t $((n / per / 4)) -f "$WORK/lat.sql" postgres \
    > "$WORK/pgbench.out" 2>&1 || true
  wait $tail_pid || true
  kill -TERM $pid; wait $pid || true
  q "SELECT pg_drop_replication_slot('sluice_lat')" >/dev/null
  printf "latency %-5s at %5s rows/s (%s-row txns): %s   (pgbench %s)\n" "$sink" "$rate" "$per" "$(cat "$WORK/lat.out")" \
    "$(grep -o 'tps = [0-9.]*' "$WORK/pgbench.out" | head -n 1)"
}
for sink in redis sse; do
  latency "$sink" 1000 1
  latency "$sink" 10000 10
done
latency sse "$CLIENT_RATE" 1 "$CLIENTS"
q "DROP PUBLICATION bench_lat_pub; DROP TABLE bench_lat"
