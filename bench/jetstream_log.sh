#!/usr/bin/env bash
# The log in NATS JetStream ([log] backend = "jetstream") against pg_recvlogical, in one run.
#
#   bash bench/jetstream_log.sh      # RUNS=3 rounds; ROWS=1000000; ONLY=failover: that part
#
# ROWS rows in 1,000-row transactions (loaded by ../shared/reference/bench.sh), then RUNS
# rounds, each draining slots made at the same point in turn:
#   pg_recvlogical (to a file, no fsync), then
#   Sluice with its log in a one-node JetStream (file storage) and a file sink:
#     "producer": until the slot's confirmed position reaches the end, which Sluice moves
#                 only over groups JetStream acknowledged (the time to get the changes
#                 into the stream);
#     "through":  until the file sink holds every row (`run --until-lsn`: the changes
#                 also read back from the stream and written out, fsync'd), with the CPU
#                 of Sluice and of nats-server.
# Each round uses a stream of its own. Ratios are taken per round; the median is the figure.
# Then failover, RUNS times: instance A streams 10,000 rows into a file sink while B, the
# same pipeline with a data_dir of its own, waits as a standby; A is killed (SIGKILL),
# one row is inserted, and the script times until B's slot session is active and until
# B's file sink holds that row (B's sink first delivers what the stream still holds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
NATS_PORT=${NATS_PORT:-24223}
bash scripts/install-deps.sh --tests
source bench/common.sh
VENV=${SLUICE_TOOLS:-$HOME/.cache/sluice-tools}/venv
bash "$REF/start_pg.sh" >/dev/null
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
"$VENV/bin/nats-server" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID 2>/dev/null; wait $NATS_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
NATS_URL="nats://127.0.0.1:$NATS_PORT"

# Pipeline $1 reading bench_js_pub into a file sink, its log in JetStream.
config() {
  mkdir -p "$WORK/$1"
  { toml_head "$1" bench_js_pub bench_js
    printf '[[sinks]]\nname = "out"\ntype = "file"\npath = "changes.jsonl"\n'
    printf '[log]\nbackend = "jetstream"\n[log.jetstream]\nurl = "%s"\n' "$NATS_URL"
  } > "$WORK/$1/sluice.toml"
}

# Seconds until slot sluice_$1's confirmed position reaches LSN $2 (Sluice running,
# stopped after).
producer_drain() {
  local name=$1 end=$2 t0 t1 pid
  t0=$(now)
  "$SLUICE" run -c "$WORK/$name/sluice.toml" 2>"$WORK/$name/log" &
  pid=$!
  until [ "$(q "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'sluice_$name'")" = t ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name/log" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(now)
  kill -INT "$pid"; wait "$pid" || true
  q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
  echo "$t1 - $t0" | bc -l
}

# CPU seconds (user + system) nats-server has used so far.
nats_cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$NATS_PID/stat"; }

# Seconds for `run --until-lsn $2` to finish with every row in the file sink; Sluice's and
# nats-server's CPU seconds of the round go to $WORK/cpu.
through_drain() {
  local name=$1 end=$2 t0 t1 got n0
  n0=$(nats_cpu)
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$WORK/$name/cpu" "$SLUICE" run -c "$WORK/$name/sluice.toml" --until-lsn "$end" 2>"$WORK/$name/log" || { cat "$WORK/$name/log" >&2; exit 1; }
  t1=$(now)
  printf "%s %s\n" "$(awk '{ print $1 + $2 }' "$WORK/$name/cpu")" "$(echo "$(nats_cpu) - $n0" | bc -l)" >> "$WORK/cpu"
  got=$(wc -l < "$WORK/$name/changes.jsonl")
  [ "$got" -ge "$ROWS" ] || { echo "sluice delivered $got of $ROWS rows" >&2; exit 1; }
  q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
  echo "$t1 - $t0" | bc -l
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1), $("$VENV/bin/nats-server" --version)"
if [ "${ONLY:-}" != failover ]; then
extra=$(for i in $(seq 1 "$RUNS"); do printf "ref_p%s,sluice_jp%s,ref_t%s,sluice_jt%s," "$i" "$i" "$i" "$i"; done); extra=${extra%,}
line=$(ROWS=$ROWS BATCH=1000 DRAINS=1 EXTRA_SLOTS=$extra KEEP=1 TABLE=bench_js PUB=bench_js_pub SLOT=ref_js \
  bash "$REF/bench.sh" "$CONN")
end=$(sed -n 's/.*end_lsn=\([^ ]*\).*/\1/p' <<<"$line")
ref_p=""; sl_p=""; ref_t=""; sl_t=""
for i in $(seq 1 "$RUNS"); do
  ref_p="$ref_p $(ref_drain "ref_p$i" "$end" bench_js_pub)"
  config "jp$i"
  sl_p="$sl_p $(producer_drain "jp$i" "$end")"
  ref_t="$ref_t $(ref_drain "ref_t$i" "$end" bench_js_pub)"
  config "jt$i"
  sl_t="$sl_t $(through_drain "jt$i" "$end")"
done
report_pairs "producer into JetStream" "$ROWS" "$ref_p" "$sl_p"
report_pairs "through JetStream to a file sink" "$ROWS" "$ref_t" "$sl_t"
echo "CPU per through round (Sluice, nats-server; seconds): $(awk '{ printf "%.1f+%.1f ", $1, $2 }' "$WORK/cpu")"
echo "JetStream's store: $(du -sb "$WORK/jetstream" | cut -f1) bytes for $((RUNS * 2)) copies of $ROWS rows"
q "DROP PUBLICATION bench_js_pub; DROP TABLE bench_js"
fi

# ---- failover ---------------------------------------------------------------------
# Waits (bounded) until command $2 succeeds; fails with $1.
await() { for _ in $(seq 1 3000); do eval "$2" && return 0; sleep 0.01; done; echo "timed out: $1" >&2; exit 1; }
q "CREATE TABLE bench_fo (id bigint PRIMARY KEY, v text); CREATE PUBLICATION bench_fo_pub FOR TABLE bench_fo"
active=""; delivered=""
for i in $(seq 1 "$RUNS"); do
  name="fo$i"
  for d in a b; do
    mkdir -p "$WORK/$name$d"
    { toml_head "$name" bench_fo_pub bench_fo
      printf '[[sinks]]\nname = "out"\ntype = "file"\npath = "changes.jsonl"\n'
      printf '[log]\nbackend = "jetstream"\n[log.jetstream]\nurl = "%s"\n' "$NATS_URL"
    } > "$WORK/$name$d/sluice.toml"
  done
  "$SLUICE" run -c "$WORK/${name}a/sluice.toml" 2>"$WORK/${name}a/log" & a_pid=$!
  await "A streaming" "[ \"\$(q \"SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice_$name'\")\" = t ]"
  "$SLUICE" run -c "$WORK/${name}b/sluice.toml" 2>"$WORK/${name}b/log" & b_pid=$!
  await "B waiting" "grep -q 'waiting as a standby' '$WORK/${name}b/log'"
  q "INSERT INTO bench_fo SELECT g + $i * 1000000, 'x' FROM generate_series(1, 10000) g"
  await "A delivering" "[ \"\$(wc -l < '$WORK/${name}a/changes.jsonl' 2>/dev/null || echo 0)\" -ge 10000 ]"
  kill -KILL "$a_pid"; wait "$a_pid" 2>/dev/null || true
  t0=$(now)
  q "INSERT INTO bench_fo VALUES (-$i, 'marker')"
  await "B active" "grep -q 'took over as the active instance' '$WORK/${name}b/log'"
  t1=$(now)
  await "B delivering the row" "grep -q '\"id\":-$i' '$WORK/${name}b/changes.jsonl' 2>/dev/null"
  t2=$(now)
  kill -INT "$b_pid"; wait "$b_pid" 2>/dev/null || true
  q "SELECT pg_drop_replication_slot('sluice_$name')" >/dev/null
  active="$active $(echo "$t1 - $t0" | bc -l)"; delivered="$delivered $(echo "$t2 - $t0" | bc -l)"
done
printf "failover (kill -9 of the active instance): standby active after %.2f s, the next change delivered after %.2f s (medians; rounds: %s / %s)\n" \
  "$(printf "%s\n" $active | median)" "$(printf "%s\n" $delivered | median)" "$(echo $active | tr ' ' ',')" "$(echo $delivered | tr ' ' ',')"
q "DROP PUBLICATION bench_fo_pub; DROP TABLE bench_fo"
