#!/usr/bin/env bash
# Benchmark: FHIR bulk $import of NDJSON (ImagingStudy + DiagnosticReport) into PostgreSQL.
#
# N ImagingStudy + N DiagnosticReport lines (default N=100000), made once by the independent
# generator tests/gen_fhir_ndjson.py and kept under $BENCH_DIR/import-N. Then, in the same run:
#   - floor:  psql \copy of the same lines, verbatim, into a bare `doc jsonb` table of a fresh
#             PostgreSQL database (what PostgreSQL alone needs to take these bytes in), once
#             before and once after the import; the faster of the two is the reference;
#   - import: one `radiology import` (the service's importer, release build) of both files into
#             another fresh database, with its wall time and peak RSS; the script checks that
#             each table then holds N rows for the tenant.
# The figures are import resources/s (goal >= 25,000; anchors: HAPI FHIR ~2,200/s, Smile CDR
# 22,251/s) and import rate / COPY rate (goal >= 0.3).
# Then the memory check: about 1 GB of DiagnosticReport NDJSON (lines of ~17 KB, kept under
# $BENCH_DIR/import-1g) and the N ImagingStudy lines, one job (both types written at once),
# into a fresh database; peak RSS goal < 200 MB.
#
# usage: bench/import.sh          N=10000 bench/import.sh          SKIP_1GB=1 bench/import.sh
# environment: RADIOLOGY_BENCH_PG_URL (admin URL), BENCH_DIR, CARGO_TARGET_DIR,
#              BIG_REPORTS (60000) and BIG_TEXT_BYTES (12000) size the 1 GB file.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
SKIP_1GB="${SKIP_1GB:-0}"
BIG_REPORTS="${BIG_REPORTS:-60000}"
BIG_TEXT_BYTES="${BIG_TEXT_BYTES:-12000}"
PG="${RADIOLOGY_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/radiology-bench}"
TENANT=6f1c2a44-0000-4000-8000-0000000b0001
DB=radiology_bench_import
COPY_DB=radiology_bench_import_copy
BIG_DB=radiology_bench_import_1g
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/radiology"
command -v psql >/dev/null || { echo "needs psql (Debian package postgresql-client)" >&2; exit 1; }

WORK=$(mktemp -d -t radiology-bench-import.XXXXXX)
cleanup() {
  for db in "$DB" "$COPY_DB" "$BIG_DB"; do
    psql "$PG" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# gen DIR ARGS…: runs the generator into DIR once; a stamp (generator hash + arguments) in DIR
# makes a changed generator or size regenerate.
gen() {
  local dir=$1; shift
  local stamp
  stamp="$(sha256sum tests/gen_fhir_ndjson.py | cut -c1-16) $*"
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "data: $dir (cached)" >&2
    return
  fi
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$(dirname "$dir")"
  local t0=$SECONDS
  python3 tests/gen_fhir_ndjson.py --out "$dir.tmp" "$@"
  echo "$stamp" > "$dir.tmp/.stamp"
  mv "$dir.tmp" "$dir"
  echo "data: $dir generated in $((SECONDS - t0)) s" >&2
}

# fresh_db NAME: drops and creates database NAME; prints its URL.
fresh_db() {
  psql "$PG" -qc "set client_min_messages = warning" -c "drop database if exists $1 with (force)" \
    -c "create database $1" >/dev/null
  echo "${PG%/*}/$1"
}

# measured NAME CMD…: runs CMD under bench/measure.py, its stdout to $WORK/NAME.out and its
# stderr to $WORK/NAME.err; sets WALL_S and PEAK_MIB. On failure shows the stderr tail and exits.
measured() {
  local name=$1; shift
  local m
  # shellcheck disable=SC2016 # $1 and $@ are the inner shell's
  if ! m=$(python3 bench/measure.py sh -c 'out=$1; shift; exec "$@" >"$out"' sh "$WORK/$name.out" "$@" \
             2>"$WORK/$name.err"); then
    echo "$name failed: $*" >&2
    tail -c 4000 "$WORK/$name.err" | tr '\r' '\n' | tail -20 >&2
    exit 1
  fi
  read -r WALL_S PEAK_MIB <<<"$m"
}

checkpoint() { psql "$PG" -qc checkpoint >/dev/null 2>&1 || true; }

# import_into URL FILE…: migrates the empty database first (so that the timing is the import
# alone), then runs `radiology import` of FILE… for $TENANT under measure.
import_into() {
  local url=$1; shift
  RADIOLOGY_DATABASE_URL="$url" RADIOLOGY_DATA_DIR="$WORK/data" RUST_LOG=warn "$BIN" sync >/dev/null
  checkpoint
  cat "$@" >/dev/null   # same warm page cache as the COPY floor
  RADIOLOGY_DATABASE_URL="$url" RADIOLOGY_DATA_DIR="$WORK/data" RUST_LOG=warn \
    measured import "$BIN" import --tenant "$TENANT" "$@"
  if [ -s "$WORK/import.out" ]; then sed 's/^/  | /' "$WORK/import.out" >&2; fi
}

count() { psql "$1" -Atqc "select count(*) from radiology.$2 where tenant_id = '$TENANT'"; }

mkdir -p "$WORK/data"
printf '%s\n' "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); PostgreSQL $(psql "$PG" -Atqc 'show server_version')"

# ---- N + N: import vs COPY ---------------------------------------------------------------------
DATA="$BENCH_DIR/import-$N"
gen "$DATA" --studies "$N" --reports "$N"
FILES=("$DATA/ImagingStudy.ndjson" "$DATA/DiagnosticReport.ndjson")
RESOURCES=$((2 * N))

# copy_floor: one COPY of the lines into a fresh bare table; sets COPY_S.
copy_floor() {
  local copy_url copied
  copy_url=$(fresh_db "$COPY_DB")
  psql "$copy_url" -qc 'create table bare(doc jsonb)'
  local copy_cmds=()
  for f in "${FILES[@]}"; do
    # CSV with quote and delimiter bytes that never occur: every line is one verbatim field.
    copy_cmds+=(-c "\\copy bare from '$f' with (format csv, quote e'\\x01', delimiter e'\\x02')")
  done
  checkpoint
  cat "${FILES[@]}" >/dev/null
  measured copy psql "$copy_url" -v ON_ERROR_STOP=1 -q "${copy_cmds[@]}"
  COPY_S=$WALL_S
  copied=$(psql "$copy_url" -Atqc 'select count(*) from bare')
  [ "$copied" = "$RESOURCES" ] || { echo "COPY loaded $copied of $RESOURCES lines" >&2; exit 1; }
  psql "$PG" -qc "drop database $COPY_DB" >/dev/null
  echo "copy floor: $RESOURCES lines in $COPY_S s" >&2
}

# The machine's speed drifts (shared cores): COPY runs before and after the import, and the
# ratio is taken against the faster of the two (the stricter comparison).
copy_floor
COPY_BEFORE_S=$COPY_S

"$BIN" import --help >/dev/null 2>&1 || { echo "this build has no 'radiology import' subcommand" >&2; exit 1; }
url=$(fresh_db "$DB")
import_into "$url" "${FILES[@]}"
IMPORT_S=$WALL_S IMPORT_MIB=$PEAK_MIB
studies=$(count "$url" imaging_studies)
reports=$(count "$url" diagnostic_reports)
[ "$studies" = "$N" ] || { echo "import stored $studies of $N ImagingStudy" >&2; exit 1; }
[ "$reports" = "$N" ] || { echo "import stored $reports of $N DiagnosticReport" >&2; exit 1; }
psql "$PG" -qc "drop database $DB" >/dev/null

copy_floor
COPY_S=$(awk -v a="$COPY_BEFORE_S" -v b="$COPY_S" 'BEGIN { print (a < b ? a : b) }')
echo "copy floor before / after the import: $COPY_BEFORE_S s / $WALL_S s; the faster is the reference" >&2

printf '%-10s %9s %13s %8s %13s %12s %16s\n' resources import_s import_res/s copy_s copy_lines/s import/copy import_peak_MiB
awk -v n="$RESOURCES" -v i="$IMPORT_S" -v c="$COPY_S" -v m="$IMPORT_MIB" \
  'BEGIN { printf "%-10d %9.2f %13.0f %8.2f %13.0f %12.2f %16.1f\n", n, i, n/i, c, n/c, c/i, m }'
echo "anchors: HAPI FHIR ~2,200 resources/s; Smile CDR 22,251 resources/s"
awk -v n="$RESOURCES" -v i="$IMPORT_S" -v c="$COPY_S" 'BEGIN {
  r = n / i; q = c / i
  printf "goal: >= 25,000 resources/s: %s (%.0f); >= 0.30x COPY rate: %s (%.2fx)\n",
    (r >= 25000 ? "met" : "NOT met"), r, (q >= 0.3 ? "met" : "NOT met"), q }'

# ---- memory: ~1 GB of DiagnosticReport NDJSON, with the N ImagingStudy lines beside it ----------------------------------------------------
if [ "$SKIP_1GB" = 1 ]; then
  echo "1 GB memory check skipped (SKIP_1GB=1)"
  exit 0
fi
BIG="$BENCH_DIR/import-1g"
gen "$BIG" --studies 0 --reports "$BIG_REPORTS" --report-text-bytes "$BIG_TEXT_BYTES" --id-prefix big- --seed 2
BIG_FILE="$BIG/DiagnosticReport.ndjson"
big_mib=$(awk -v b="$(stat -c %s "$BIG_FILE")" 'BEGIN { printf "%.0f", b / 1048576 }')
url=$(fresh_db "$BIG_DB")
# The N ImagingStudy lines go in the same job: on PostgreSQL inputs of different types are
# written at the same time, so the peak is taken with both in flight.
import_into "$url" "$DATA/ImagingStudy.ndjson" "$BIG_FILE"
reports=$(count "$url" diagnostic_reports)
[ "$reports" = "$BIG_REPORTS" ] || { echo "import stored $reports of $BIG_REPORTS DiagnosticReport" >&2; exit 1; }
studies=$(count "$url" imaging_studies)
[ "$studies" = "$N" ] || { echo "import stored $studies of $N ImagingStudy" >&2; exit 1; }
psql "$PG" -qc "drop database $BIG_DB" >/dev/null

printf '%-10s %9s %9s %9s %13s %16s\n' reports file_MiB studies import_s import_res/s import_peak_MiB
awk -v n="$BIG_REPORTS" -v s="$big_mib" -v st="$N" -v i="$WALL_S" -v m="$PEAK_MIB" \
  'BEGIN { printf "%-10d %9d %9d %9.2f %13.0f %16.1f\n", n, s, st, i, (n + st)/i, m }'
awk -v m="$PEAK_MIB" 'BEGIN { printf "goal: peak RSS < 200 MB (190.7 MiB): %s\n", (m * 1048576 < 200e6 ? "met" : "NOT met") }'
