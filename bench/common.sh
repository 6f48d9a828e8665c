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
cargo build --release --quiet -p sluice
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
TOML
}
