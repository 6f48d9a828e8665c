#!/usr/bin/env bash
# `sluice server` with many pipelines: its footprint when idle, and its throughput and CPU
# under load against the same work done by one `sluice run` process per pipeline.
#
#   bash bench/server.sh        # IDLE="1 10 50" PIPES=10 ROWS=100000 (per pipeline) RUNS=2
#
# 1. Idle: a server with 1, 10 and 50 pipelines (each its own slot, publication and
#    file sink on one idle table), all streaming; resident memory once settled, and CPU
#    seconds spent over IDLE_SECONDS of nothing happening.
# 2. Load: PIPES tables, each loaded with ROWS rows in 1,000-row transactions after 2 x
#    RUNS slots per table were made at one point. Round by round, alternating: one server
#    drains one set of slots with PIPES pipelines created through the API, then PIPES
#    `sluice run --until-lsn` processes drain another set, all at once. Each side's time
#    runs from its start until every file sink holds every row; its CPU is the server's
#    (from /proc) or the processes' together (from time(1)). The ratios are taken per
#    round. While the server drains, GET /v1/pipelines is timed every 100 ms: the
#    management API's latency under that load.
# Uses a throw-away PostgreSQL of its own in $SBASE, port $SPORT (more slots and
# connections than the streaming benchmark's).
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-"1 10 50"}
IDLE_SECONDS=${IDLE_SECONDS:-30}
PIPES=${PIPES:-10}
ROWS=${ROWS:-100000}
export BASE=${SBASE:-/tmp/sluice-bench-server-pg} PORT=${SPORT:-54341}
source bench/common.sh
export PGOPTIONS="-c client_min_messages=warning"
bash "$REF/start_pg.sh" >/dev/null
if [ "$(q 'SHOW max_replication_slots')" -lt 120 ]; then
  q "ALTER SYSTEM SET max_replication_slots = 120" >/dev/null
  q "ALTER SYSTEM SET max_wal_senders = 120" >/dev/null
  q "ALTER SYSTEM SET max_connections = 400" >/dev/null
  su postgres -c "$PGBIN/pg_ctl -D $BASE/data -w -t 60 restart -l $BASE/pg.log" >/dev/null
fi
WORK=$(mktemp -d /tmp/sluice-bench-server.XXXXXX)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
CLK=$(getconf CLK_TCK)

# CPU seconds (user + system) process $1 has used.
cpu_of() { awk -v t="$CLK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# Starts a server on data dir $1; sets SERVER_PID, ADDR, TOKEN.
start_server() {
  mkdir -p "$1"
  "$SLUICE" server --data-dir "$1" --listen 127.0.0.1:0 >"$1.out" 2>"$1.log" &
  SERVER_PID=$!
  for _ in $(seq 1 300); do [ -s "$1/server.addr" ] && break; sleep 0.1; done
  ADDR=$(cat "$1/server.addr")
  TOKEN=$(sed -n 's/^admin token.*: //p' "$1.out")
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
api() { curl -sS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "http://$ADDR$2" ${3:+-d "$3"}; }

# A pipeline $1 on table public.$2 into file $3 (more [source] JSON in $4).
pipeline_json() {
  printf '{"pipeline":{"name":"%s"},"source":{"url":"%s","tables":["public.%s"],"snapshot":"never","on_unknown_slot":"adopt","status_interval_secs":1%s},"sinks":[{"name":"out","type":"file","path":"%s"}]}' \
    "$1" "$URL" "$2" "${4:-}" "$3"
}

# Waits until every pipeline of the server streams.
wait_streaming() {
  for _ in $(seq 1 600); do
    n=$(api GET /v1/pipelines | json 'sum(1 for p in d["pipelines"] if p.get("status", {}).get("streaming"))')
    [ "$n" -ge "$1" ] && return 0
    sleep 0.2
  done
  echo "only $n of $1 pipelines stream" >&2; tail -n 20 "$WORK"/*.log >&2; exit 1
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(q 'SELECT version()' | cut -d, -f1)"

# ---- 1. idle pipelines ---------------------------------------------------------
q "DROP TABLE IF EXISTS bench_idle; CREATE TABLE bench_idle (id int PRIMARY KEY, v text)"
for n in $IDLE; do
  dir=$WORK/idle$n
  start_server "$dir"
  for i in $(seq 1 "$n"); do
    api POST /v1/pipelines "$(pipeline_json "idle${n}_$i" bench_idle "$dir/out$i.jsonl")" >/dev/null
  done
  wait_streaming "$n"
  sleep 5
  c0=$(cpu_of "$SERVER_PID")
  sleep "$IDLE_SECONDS"
  c1=$(cpu_of "$SERVER_PID")
  printf "idle: %2d pipelines   resident %4s MB   CPU %.3f s per %s s (%.2f%% of a core)   threads %s\n" \
    "$n" "$(rss_mb "$SERVER_PID")" "$(echo "$c1 - $c0" | bc -l)" "$IDLE_SECONDS" \
    "$(echo "($c1 - $c0) * 100 / $IDLE_SECONDS" | bc -l)" "$(ls /proc/"$SERVER_PID"/task | wc -l)"
  # Deleting drops each pipeline's slot and publication.
  for i in $(seq 1 "$n"); do api DELETE "/v1/pipelines/idle${n}_$i" >/dev/null; done
  stop_server
done

# ---- 2. PIPES pipelines under load: one server against PIPES processes --------------
for t in $(seq 1 "$PIPES"); do
  q "DROP TABLE IF EXISTS bench_srv$t; DROP PUBLICATION IF EXISTS bench_srv${t}_pub;
     CREATE TABLE bench_srv$t (id bigint PRIMARY KEY, payload text) WITH (autovacuum_enabled = off);
     CREATE PUBLICATION bench_srv${t}_pub FOR TABLE bench_srv$t"
  for r in $(seq 1 "$RUNS"); do
    for side in s p; do
      q "SELECT pg_create_logical_replication_slot('sluice_r${r}${side}$t', 'pgoutput')" >/dev/null
    done
  done
done
for t in $(seq 1 "$PIPES"); do
  for b in $(seq 0 1000 $((ROWS - 1))); do
    echo "INSERT INTO bench_srv$t SELECT g, rpad(md5(g::text), 400, 'x') FROM generate_series($b + 1, $b + 1000) g;"
  done
done > "$WORK/load.sql"
psql -d "$CONN" -X -q -v ON_ERROR_STOP=1 -f "$WORK/load.sql"
end=$(q "SELECT pg_current_wal_lsn()")
q "CHECKPOINT"

# Waits until each of files $2.. holds $1 lines.
wait_lines() {
  local want=$1; shift
  for _ in $(seq 1 12000); do
    local short=0
    for f in "$@"; do [ "$(wc -l < "$f" 2>/dev/null || echo 0)" -ge "$want" ] || { short=1; break; }; done
    [ $short = 0 ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $want lines" >&2; exit 1
}

server_times=""; server_cpu=""; proc_times=""; proc_cpu=""; api_ms=""
for r in $(seq 1 "$RUNS"); do
  # The server.
  dir=$WORK/load$r
  start_server "$dir"
  files=()
  t0=$(now); c0=$(cpu_of "$SERVER_PID")
  for t in $(seq 1 "$PIPES"); do
    api POST /v1/pipelines "$(pipeline_json "r${r}s$t" "bench_srv$t" "$dir/out$t.jsonl" ",\"publication\":\"bench_srv${t}_pub\"")" >/dev/null
    files+=("$dir/out$t.jsonl")
  done
  ( while :; do curl -sS -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "http://$ADDR/v1/pipelines"; sleep 0.1; done ) > "$dir/api.txt" 2>/dev/null &
  poller=$!
  wait_lines "$ROWS" "${files[@]}"
  t1=$(now); c1=$(cpu_of "$SERVER_PID")
  kill "$poller"; wait "$poller" 2>/dev/null || true
  api_ms="$api_ms $(awk '{print $1 * 1000}' "$dir/api.txt" | tr '\n' ' ')"
  server_times="$server_times $(echo "$t1 - $t0" | bc -l)"
  server_cpu="$server_cpu $(echo "$c1 - $c0" | bc -l)"
  for t in $(seq 1 "$PIPES"); do api DELETE "/v1/pipelines/r${r}s$t?keep_slot=true" >/dev/null; done
  stop_server
  for t in $(seq 1 "$PIPES"); do q "SELECT pg_drop_replication_slot('sluice_r${r}s$t')" >/dev/null; done
  rm -rf "$dir"

  # One process per pipeline, all at once.
  for t in $(seq 1 "$PIPES"); do
    mkdir -p "$WORK/p$r/$t"
    { toml_head "r${r}p$t" "bench_srv${t}_pub" "bench_srv$t"; printf 'snapshot = "never"\n[[sinks]]\nname = "out"\ntype = "file"\npath = "changes.jsonl"\n'; } > "$WORK/p$r/$t/sluice.toml"
  done
  cat > "$WORK/p$r/all.sh" <<RUN
for t in \$(seq 1 $PIPES); do "$SLUICE" run -c "$WORK/p$r/\$t/sluice.toml" --until-lsn $end 2>"$WORK/p$r/\$t/log" & done
wait
RUN
  t0=$(now)
  # time(1) counts the CPU of the processes the shell waited for.
  /usr/bin/time -f "%U %S" -o "$WORK/p$r/time" bash "$WORK/p$r/all.sh"
  t1=$(now)
  for t in $(seq 1 "$PIPES"); do
    got=$(wc -l < "$WORK/p$r/$t/changes.jsonl")
    [ "$got" -ge "$ROWS" ] || { echo "process $t delivered $got of $ROWS" >&2; cat "$WORK/p$r/$t/log" >&2; exit 1; }
    q "SELECT pg_drop_replication_slot('sluice_r${r}p$t')" >/dev/null
  done
  proc_times="$proc_times $(echo "$t1 - $t0" | bc -l)"
  proc_cpu="$proc_cpu $(awk '{print $1 + $2}' "$WORK/p$r/time")"
  rm -rf "$WORK/p$r"
done

total=$((PIPES * ROWS))
printf "load: %d pipelines x %d rows   server %s s (CPU %s s)   %d processes %s s (CPU %s s)\n" \
  "$PIPES" "$ROWS" "$(echo $server_times | tr ' ' ',')" "$(echo $server_cpu | tr ' ' ',')" \
  "$PIPES" "$(echo $proc_times | tr ' ' ',')" "$(echo $proc_cpu | tr ' ' ',')"
printf "      throughput: server %.0f rows/s, processes %.0f rows/s (medians); server/processes per round: %s (median %s)\n" \
  "$(echo "$total / $(printf '%s\n' $server_times | median)" | bc -l)" \
  "$(echo "$total / $(printf '%s\n' $proc_times | median)" | bc -l)" \
  "$(pair_ratios "$proc_times" "$server_times" | tr '\n' ',' | sed 's/,$//')" \
  "$(pair_ratios "$proc_times" "$server_times" | median)"
printf "      CPU: server/processes per round: %s (median %s)\n" \
  "$(pair_ratios "$server_cpu" "$proc_cpu" | tr '\n' ',' | sed 's/,$//')" \
  "$(pair_ratios "$server_cpu" "$proc_cpu" | median)"
printf "      GET /v1/pipelines during the server's drain: %s requests, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n" \
  "$(printf '%s\n' $api_ms | wc -l)" \
  "$(printf '%s\n' $api_ms | sort -n | awk '{a[NR]=$1} END{print a[int(NR*0.5)+1]}')" \
  "$(printf '%s\n' $api_ms | sort -n | awk '{a[NR]=$1} END{i=int(NR*0.99)+1; if (i>NR) i=NR; print a[i]}')" \
  "$(printf '%s\n' $api_ms | sort -n | tail -n 1)"
for t in $(seq 1 "$PIPES"); do q "DROP PUBLICATION bench_srv${t}_pub; DROP TABLE bench_srv$t"; done
