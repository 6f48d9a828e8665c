#!/usr/bin/env bash
# Database sinks benchmark: Sluice's copy and stream into ClickHouse and into another
# PostgreSQL, against the references, alternating in one run.
#
#   bash bench/databases.sh      # ROWS=5000000 STREAM_ROWS=1000000 RUNS=3 SINKS="clickhouse postgres"
#
# 1. Copy: a table of ROWS rows shaped like bench/snapshot.sh's (id bigserial primary key,
#    a 200-character payload, an int, a timestamptz). Each round: the reference, `COPY t TO
#    STDOUT (FORMAT binary)` into /dev/null, then Sluice: a fresh pipeline whose initial
#    copy goes into the sink, timed from the start of `sluice run --until-lsn` until it
#    exits, which is once the sink acknowledged every row (the target is then checked to
#    hold ROWS rows). Ratio per round (COPY's time / Sluice's), median reported, with
#    Sluice's CPU and the target server's.
# 2. Stream: STREAM_ROWS rows in 1,000-row transactions into a table with slots made at the
#    same point; each round drains one slot with pg_recvlogical, then one with Sluice into
#    the sink (until it acknowledged the last row).
# ClickHouse is Debian's server (scripts/install-deps.sh --tests installs it), started
# here in $WORK on port $CH_PORT; the PostgreSQL target is a database of the benchmark's
# own throw-away server (../shared/reference/start_pg.sh), so the two share its CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-5000000}
STREAM_ROWS=${STREAM_ROWS:-1000000}
SINKS=${SINKS:-clickhouse postgres}
CH_PORT=${CH_PORT:-18187}
source bench/common.sh
bash scripts/install-deps.sh --tests >/dev/null
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
ch_pid=""
cleanup() { [ -n "$ch_pid" ] && kill "$ch_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# ---- ClickHouse -------------------------------------------------------------------
mkdir -p "$WORK/ch"
cat > "$WORK/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$WORK/ch/server.log</log><errorlog>$WORK/ch/err.log</errorlog></logger>
  <http_port>$CH_PORT</http_port>
  <tcp_port>$((CH_PORT + 1))</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$WORK/ch/data/</path>
  <tmp_path>$WORK/ch/tmp/</tmp_path>
  <user_files_path>$WORK/ch/user_files/</user_files_path>
  <users_config>$WORK/ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
cat > "$WORK/ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
/usr/sbin/clickhouse-server --config-file="$WORK/ch/config.xml" >"$WORK/ch/out.log" 2>&1 &
ch_pid=$!
chq() { curl -sS --fail-with-body --data-binary "$1" "http://127.0.0.1:$CH_PORT/"; }
for _ in $(seq 1 150); do chq "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
chq "SELECT 1" >/dev/null
ch_cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$ch_pid/stat"; }
# CPU seconds (user+system) of the postmaster's exited children: the backends.
pg_cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($16 + $17) / t }' "/proc/$(head -n 1 "$BASE/data/postmaster.pid")/stat"; }

target_db=sluice_bench_target
q "DROP DATABASE IF EXISTS $target_db" >/dev/null
q "CREATE DATABASE $target_db" >/dev/null
TARGET_URL="postgres:///$target_db?host=$BASE&port=$PORT&user=postgres"

sink_toml() { # the [[sinks]] entry of sink kind $1
  case $1 in
    clickhouse) printf '[[sinks]]\nname = "db"\ntype = "clickhouse"\nurl = "http://127.0.0.1:%s"\n' "$CH_PORT" ;;
    postgres) printf '[[sinks]]\nname = "db"\ntype = "postgres"\nurl = "%s"\n' "$TARGET_URL" ;;
  esac
}
target_count() { # rows of table $2 in sink kind $1's target
  case $1 in
    clickhouse) chq "SELECT count() FROM default.$2 FINAL WHERE _sluice_deleted = 0" ;;
    postgres) psql -d "host=$BASE port=$PORT user=postgres dbname=$target_db" -X -q -At -c "SELECT count(*) FROM public.$2" ;;
  esac
}
target_reset() { # drops table $2 (and Sluice's bookkeeping) in sink kind $1's target
  case $1 in
    clickhouse) chq "DROP TABLE IF EXISTS default.$2" >/dev/null; chq "DROP TABLE IF EXISTS default.sluice_parked" >/dev/null; chq "DROP TABLE IF EXISTS default.sluice_resumed" >/dev/null ;;
    postgres) psql -d "host=$BASE port=$PORT user=postgres dbname=$target_db" -X -q -c "DROP TABLE IF EXISTS public.$2; DROP TABLE IF EXISTS public.sluice_positions" >/dev/null 2>&1 ;;
  esac
}
target_cpu() { case $1 in clickhouse) ch_cpu ;; postgres) pg_cpu ;; esac; }

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1), ClickHouse $(chq 'SELECT version()')"

# ---- 1. copy ----------------------------------------------------------------------
if [ "$(q "SELECT obj_description(to_regclass('snap_bench'), 'pg_class')")" != "$ROWS" ]; then
  echo "creating snap_bench with $ROWS rows..."
  q "DROP TABLE IF EXISTS snap_bench;
     CREATE TABLE snap_bench (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz);
     INSERT INTO snap_bench (payload, n, ts)
       SELECT rpad(md5(g::text), 200, md5((g + 1)::text)), g, clock_timestamp() FROM generate_series(1, $ROWS) g;
     COMMENT ON TABLE snap_bench IS '$ROWS';"
  q "VACUUM (ANALYZE, FREEZE) snap_bench"
fi
q "SELECT count(*) FROM snap_bench" >/dev/null

copy_time() {
  local t0 t1
  t0=$(now)
  psql -d "$CONN" -X -q -c "COPY snap_bench TO STDOUT (FORMAT binary)" > /dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

for kind in $SINKS; do
  ref_times="" times="" cpu="" tcpu=""
  for i in $(seq 1 "$RUNS"); do
    ref_times="$ref_times $(copy_time)"
    name="copy_${kind}_$i"
    dir="$WORK/$name"
    mkdir -p "$dir"
    target_reset "$kind" snap_bench
    { printf '[pipeline]\nname = "%s"\ndata_dir = "data"\n[source]\nurl = "%s"\ntables = ["public.snap_bench"]\nsnapshot_workers = 2\n' "$name" "$URL"; sink_toml "$kind"; } > "$dir/sluice.toml"
    end=$(q "SELECT pg_current_wal_lsn()")
    before=$(target_cpu "$kind")
    t0=$(now)
    /usr/bin/time -f "%U %S" -o "$dir/time" "$SLUICE" run -c "$dir/sluice.toml" --until-lsn "$end" 2>"$dir/log" \
      || { tail -n 20 "$dir/log" >&2; exit 1; }
    t1=$(now)
    sleep 1 # the postmaster adds a backend's CPU to its own once it has reaped it
    after=$(target_cpu "$kind")
    got=$(target_count "$kind" snap_bench)
    [ "$got" -eq "$ROWS" ] || { echo "$kind holds $got rows, expected $ROWS" >&2; tail -n 20 "$dir/log" >&2; exit 1; }
    times="$times $(echo "$t1 - $t0" | bc -l)"
    cpu="$cpu $(awk '{print $1 + $2}' "$dir/time")"
    tcpu="$tcpu $(echo "$after - $before" | bc -l)"
    q "SELECT pg_drop_replication_slot('sluice_$name'); DROP PUBLICATION IF EXISTS sluice_$name;" >/dev/null
    rm -rf "$dir"
  done
  ratios=$(pair_ratios "$ref_times" "$times")
  printf "copy %s rows into %-10s sluice %8.0f rows/s (median; %s s)   COPY binary %8.0f rows/s (%s s)   ratio %.2f (per round: %s)   sluice CPU %s s   target CPU %s s\n" \
    "$ROWS" "$kind" "$(echo "$ROWS / $(printf "%s\n" $times | median)" | bc -l)" "$(echo $times | tr ' ' ',')" \
    "$(echo "$ROWS / $(printf "%s\n" $ref_times | median)" | bc -l)" "$(echo $ref_times | tr ' ' ',')" \
    "$(printf "%s\n" $ratios | median)" "$(echo $ratios | tr ' ' ',')" \
    "$(printf "%s\n" $cpu | median)" "$(printf "%s\n" $tcpu | median | awk '{printf "%.1f", $1}')"
  target_reset "$kind" snap_bench
done

# ---- 2. stream --------------------------------------------------------------------
q "DROP TABLE IF EXISTS db_stream; DROP PUBLICATION IF EXISTS db_stream_pub;
   CREATE TABLE db_stream (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz) WITH (autovacuum_enabled = off);
   CREATE PUBLICATION db_stream_pub FOR TABLE db_stream; CHECKPOINT"
for kind in $SINKS; do
  for i in $(seq 1 "$RUNS"); do
    q "SELECT pg_create_logical_replication_slot('ref_${kind}_$i', 'pgoutput')" >/dev/null
    q "SELECT pg_create_logical_replication_slot('sluice_st_${kind}_$i', 'pgoutput')" >/dev/null
  done
done
for _ in $(seq 1 $((STREAM_ROWS / 1000))); do
  echo "INSERT INTO db_stream (payload, n, ts) SELECT rpad(md5(g::text), 200, 'x'), g, clock_timestamp() FROM generate_series(1, 1000) g;"
done | psql -d "$CONN" -X -q >/dev/null
end=$(q "SELECT pg_current_wal_lsn()")
q "CHECKPOINT"
for kind in $SINKS; do
  ref_times="" times=""
  target_reset "$kind" db_stream
  for i in $(seq 1 "$RUNS"); do
    ref_times="$ref_times $(ref_drain "ref_${kind}_$i" "$end" db_stream_pub)"
    name="st_${kind}_$i"
    mkdir -p "$WORK/$name"
    { toml_head "$name" db_stream_pub db_stream; printf 'snapshot = "never"\n'; sink_toml "$kind"; } > "$WORK/$name/sluice.toml"
    t0=$(now)
    "$SLUICE" run -c "$WORK/$name/sluice.toml" --until-lsn "$end" 2>"$WORK/$name/log" || { tail -n 20 "$WORK/$name/log" >&2; exit 1; }
    t1=$(now)
    got=$(target_count "$kind" db_stream)
    [ "$got" -eq "$STREAM_ROWS" ] || { echo "$kind holds $got rows, expected $STREAM_ROWS" >&2; exit 1; }
    times="$times $(echo "$t1 - $t0" | bc -l)"
    q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
    target_reset "$kind" db_stream
  done
  report_pairs "$STREAM_ROWS rows, 1,000-row txns, $kind" "$STREAM_ROWS" "$ref_times" "$times"
done
q "DROP PUBLICATION db_stream_pub; DROP TABLE db_stream" >/dev/null
# DROP DATABASE cannot share a transaction with other statements.
q "DROP DATABASE IF EXISTS $target_db" >/dev/null
