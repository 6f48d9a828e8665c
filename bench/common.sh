# Shared by the benchmark scripts (sourced, from the repository root): the throw-away
# PostgreSQL's address, psql and timing helpers, and a release build of Sluice.
ROOT=$PWD
REF=${REF:-$ROOT/../shared/reference}
export BASE=${BASE:-/tmp/sluice-bench-pg} PORT=${PORT:-54339}
RUNS=${RUNS:-3}
CONN="host=$BASE port=$PORT user=postgres dbname=postgres"
URL="postgres:///postgres?host=$BASE&port=$PORT&user=postgres"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
export PATH=$PGBIN:$PATH
q() { psql -d "$CONN" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

bash scripts/install-deps.sh
# SLUICE_FEATURES: cargo features of the build (bench/brokers.sh: kafka).
cargo build --release --quiet -p sluice ${SLUICE_FEATURES:+--features "$SLUICE_FEATURES"}
# SLUICE_BIN: another build to measure (e.g. an older release), instead of this tree's.
SLUICE=${SLUICE_BIN:-$ROOT/target/release/sluice}

# The [pipeline] and [source] part of a benchmark config: pipeline $1 reading publication
# $2 of public.$3 (more [source] keys may follow).
toml_head() {
  cat <<TOML
[pipeline]
name = "$1"
data_dir = "data"
[source]
url = "$URL"
tables = ["public.$3"]
publication = "$2"
status_interval_secs = 1
# The slots are made by the script, not by Sluice: accept them.
on_unknown_slot = "adopt"
TOML
}

# Seconds for pg_recvlogical to drain slot $1 up to LSN $2 (pgoutput, protocol 1,
# publication $3, to a file, no fsync), then drops the slot.
ref_drain() {
  local t0 t1 out
  out=$(mktemp /tmp/sluice-ref.XXXXXX)
  t0=$(now)
  pg_recvlogical -d "$CONN" -S "$1" --start --endpos="$2" --no-loop -F 0 -f "$out" \
    -o proto_version=1 -o publication_names="$3"
  t1=$(now)
  rm -f "$out"
  q "SELECT pg_drop_replication_slot('$1')" >/dev/null
  echo "$t1 - $t0" | bc -l
}

# The reference's time over Sluice's, round by round (both lists in round order).
pair_ratios() { paste -d' ' <(printf "%s\n" $1) <(printf "%s\n" $2) | awk '{printf "%.2f\n", $1/$2}'; }

# One line for rounds that drained the same WAL by pg_recvlogical and by Sluice in turn:
# label, rows, the reference's seconds per round, Sluice's. The ratio is taken per round
# (load from elsewhere shifts between rounds, not within one); their median is the figure.
report_pairs() {
  local ref sl ratios
  ref=$(printf "%s\n" $3 | median); sl=$(printf "%s\n" $4 | median)
  ratios=$(pair_ratios "$3" "$4")
  printf "%-34s sluice %8.0f rows/s (median; %s s)   pg_recvlogical %8.0f rows/s (%s s)   ratio %.2f (per round: %s)\n" \
    "$1" "$(echo "$2/$sl" | bc -l)" "$(echo $4 | tr ' ' ',')" "$(echo "$2/$ref" | bc -l)" "$(echo $3 | tr ' ' ',')" \
    "$(printf "%s\n" $ratios | median)" "$(echo $ratios | tr ' ' ',')"
}
