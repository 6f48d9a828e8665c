#!/usr/bin/env bash
# Two builds of Sluice on the same WAL, alternating run by run (A B A B), the ratio taken
# per pair: for telling whether a change moved the streaming path.
#
#   OLD=/path/to/an/older/sluice bash bench/compare.sh     # NEW: this tree's release build
#
# Creates 2 x PAIRS slots at one point, loads ROWS rows (~500 bytes) in 1,000-row
# transactions, then drains each slot into the file sink (`run --until-lsn`, fsync'd),
# OLD then NEW, PAIRS times; prints each drain's seconds and CPU (user, system).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to the sluice binary to compare against}"
ROWS=${ROWS:-500000}
PAIRS=${PAIRS:-4}
source bench/common.sh
NEW=${NEW:-$SLUICE}
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-compare.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
q "DROP TABLE IF EXISTS bench_cmp; DROP PUBLICATION IF EXISTS bench_cmp_pub;
   CREATE TABLE bench_cmp (id bigserial PRIMARY KEY, payload text, n int) WITH (autovacuum_enabled = off);
   CREATE PUBLICATION bench_cmp_pub FOR TABLE bench_cmp" 2>/dev/null
for i in $(seq 1 "$PAIRS"); do
  for who in old new; do q "SELECT pg_create_logical_replication_slot('sluice_cmp_$who$i', 'pgoutput')" >/dev/null; done
done
for _ in $(seq 1 $((ROWS / 1000))); do
  echo "INSERT INTO bench_cmp (payload, n) SELECT rpad(md5(random()::text), 400, 'x'), g FROM generate_series(1, 1000) g;"
done | psql -d "$CONN" -X -q >/dev/null
end=$(q "SELECT pg_current_wal_lsn()")
q "CHECKPOINT"
echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $ROWS rows; OLD=$OLD NEW=$NEW"
ratios=""
for i in $(seq 1 "$PAIRS"); do
  line="pair $i:"
  for who in old new; do
    bin=$OLD; [ "$who" = new ] && bin=$NEW
    d=$WORK/$who$i; mkdir -p "$d"
    { toml_head "cmp_$who$i" bench_cmp_pub bench_cmp; printf '[[sinks]]\nname = "out"\ntype = "file"\npath = "changes.jsonl"\n'; } > "$d/sluice.toml"
    t0=$(now)
    /usr/bin/time -f "%U %S" -o "$d/cpu" "$bin" run -c "$d/sluice.toml" --until-lsn "$end" 2>"$d/log" || { cat "$d/log" >&2; exit 1; }
    t1=$(now)
    got=$(wc -l < "$d/changes.jsonl"); rm -f "$d/changes.jsonl"
    [ "$got" -ge "$ROWS" ] || { echo "$who delivered $got of $ROWS rows" >&2; exit 1; }
    s=$(echo "$t1 - $t0" | bc -l)
    if [ "$who" = old ]; then t_old=$s; else t_new=$s; fi
    line="$line $who $(printf %.3f "$s") s (cpu user/sys $(cat "$d/cpu"))"
    q "SELECT pg_drop_replication_slot('sluice_cmp_$who$i')" >/dev/null
  done
  r=$(echo "$t_new / $t_old" | bc -l)
  ratios="$ratios $r"
  echo "$line  new/old $(printf %.2f "$r")"
done
echo "median new/old time: $(printf "%s\n" $ratios | median | xargs printf %.2f)"
q "DROP PUBLICATION bench_cmp_pub; DROP TABLE bench_cmp"
