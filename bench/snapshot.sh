#!/usr/bin/env bash
# Snapshot benchmark: Sluice's initial snapshot against a single-stream binary COPY of the
# same table, in one run.
#
#   bash bench/snapshot.sh           # ROWS=5000000 RUNS=3 WORKERS="1 2 4"
#
# 1. A table of ROWS rows shaped like the streaming benchmark's (id bigserial primary key,
#    a 200-character payload, an int, a timestamptz), vacuumed and cached.
# 2. For each worker count in WORKERS, RUNS rounds, each: the reference, `COPY t TO
#    STDOUT (FORMAT binary)` into /dev/null via psql, then Sluice: a fresh pipeline whose
#    initial snapshot copies the table into the file sink (JSON lines, fsync'd per
#    chunk). Rows/s from the copy time Sluice logs; the ratio is taken per round (COPY
#    time / Sluice's time) and its median reported, with Sluice's peak RSS and CPU and the
#    CPU of the PostgreSQL backends (the postmaster's reaped-children times).
# Uses a throw-away PostgreSQL (../shared/reference/start_pg.sh) in $BASE, port $PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-5000000}
WORKERS=${WORKERS:-1 2 4}
# CPU seconds (user+system) of the postmaster's exited children: the backends.
pg_children_cpu() {
  local pid tck
  pid=$(head -n 1 "$BASE/data/postmaster.pid")
  tck=$(getconf CLK_TCK)
  awk -v t="$tck" '{ print ($16 + $17) / t }' "/proc/$pid/stat"
}

source bench/common.sh
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ "$(q "SELECT obj_description(to_regclass('snap_bench'), 'pg_class')")" != "$ROWS" ]; then
  echo "creating snap_bench with $ROWS rows..."
  q "DROP TABLE IF EXISTS snap_bench;
     CREATE TABLE snap_bench (id bigserial PRIMARY KEY, payload text, n int, ts timestamptz);
     INSERT INTO snap_bench (payload, n, ts)
       SELECT rpad(md5(g::text), 200, md5((g + 1)::text)), g, clock_timestamp() FROM generate_series(1, $ROWS) g;
     COMMENT ON TABLE snap_bench IS '$ROWS';"
  q "VACUUM (ANALYZE, FREEZE) snap_bench"
fi
q "SELECT pg_prewarm('snap_bench')" >/dev/null 2>&1 || q "SELECT count(*) FROM snap_bench" >/dev/null
echo "table: $(q "SELECT pg_size_pretty(pg_relation_size('snap_bench'))"), $ROWS rows"

copy_time() { # seconds for one binary COPY of the table into /dev/null
  local t0 t1
  t0=$(now)
  psql -d "$CONN" -X -q -c "COPY snap_bench TO STDOUT (FORMAT binary)" > /dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

for w in $WORKERS; do
  times="" rss="" cpu="" pgcpu="" ref_times=""
  for i in $(seq 1 "$RUNS"); do
    ref_times="$ref_times $(copy_time)"
    name="snap_w${w}_$i"
    dir="$WORK/$name"
    mkdir -p "$dir"
    cat > "$dir/sluice.toml" <<TOML
[pipeline]
name = "$name"
data_dir = "data"
[source]
url = "$URL"
tables = ["public.snap_bench"]
snapshot_workers = $w
[[sinks]]
name = "out"
type = "file"
path = "changes.jsonl"
TOML
    end=$(q "SELECT pg_current_wal_lsn()")
    before=$(pg_children_cpu)
    /usr/bin/time -f "%M %U %S" -o "$dir/time" "$SLUICE" run -c "$dir/sluice.toml" --until-lsn "$end" 2>"$dir/log" \
      || { cat "$dir/log" >&2; exit 1; }
    sleep 1 # the postmaster adds a backend's CPU to its own once it has reaped it
    after=$(pg_children_cpu)
    secs=$(sed -n 's/.*snapshot: complete.*seconds=\([0-9.]*\).*/\1/p' "$dir/log")
    lines=$(wc -l < "$dir/changes.jsonl")
    [ "$lines" -ge "$ROWS" ] || { echo "run $name wrote $lines records, expected $ROWS" >&2; exit 1; }
    times="$times $secs"
    rss="$rss $(awk '{print $1}' "$dir/time")"
    cpu="$cpu $(awk '{print $2 + $3}' "$dir/time")"
    pgcpu="$pgcpu $(echo "$after - $before" | bc -l)"
    q "SELECT pg_drop_replication_slot('sluice_$name'); DROP PUBLICATION IF EXISTS sluice_$name;" >/dev/null
    rm -rf "$dir"
  done
  med=$(printf "%s\n" $times | median)
  rate=$(echo "$ROWS / $med" | bc -l)
  ratios=$(pair_ratios "$ref_times" "$times")
  printf "COPY (FORMAT binary), one stream   %9.0f rows/s (median; %s s)\n" \
    "$(echo "$ROWS / $(printf "%s\n" $ref_times | median)" | bc -l)" "$(echo $ref_times | tr ' ' ',')"
  printf "sluice snapshot, %s worker(s)       %9.0f rows/s (median of %s: %s s)   ratio %.2f (per round: %s)   peak RSS %s MB   sluice CPU %s s   backends CPU %s s\n" \
    "$w" "$rate" "$RUNS" "$times" "$(printf "%s\n" $ratios | median)" "$(echo $ratios | tr ' ' ',')" \
    "$(printf "%s\n" $rss | median | awk '{printf "%.0f", $1/1024}')" \
    "$(printf "%s\n" $cpu | median)" "$(printf "%s\n" $pgcpu | median | awk '{printf "%.1f", $1}')"
done
