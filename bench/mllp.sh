#!/usr/bin/env bash
# Benchmark: HL7 v2 ORM^O01 over MLLP into PostgreSQL, with durable ACKs.
#
# `radiology serve` (release build) runs against a fresh PostgreSQL database, with one inbound
# connector (RIS / GENERAL_HOSP) for a bench tenant. Then, in the same run:
#   - mllp:    bench/mllp_load.rs (cargo example `mllp_load`, release) opens C connections; each
#              sends v2.3.1 ORM^O01 new orders (unique control id, placer/filler numbers,
#              accession, study UID) one at a time and waits for its ACK, which must be
#              MSA|AA|<MSH-10>. WARMUP messages first (untimed), then M timed ones, split
#              evenly across the connections. The service ACKs only once the message and its
#              order are committed, so each ACK is a durable message. The script then checks
#              that every acknowledged control id is in radiology.hl7_messages as processed
#              ("no message lost"), and that orders and messages counts match, and fails
#              loudly if not. It also reports the CPU used by the service, the load generator
#              and PostgreSQL during the load (2 cores: they all share them).
#   - limit:   pgbench insert-only at the same concurrency (-c C -j 2 -T PGBENCH_SECONDS) into
#              another fresh database: each transaction inserts one ~500-byte row into a table
#              with a bigserial key and a timestamptz default, i.e. one fsync'd commit per row,
#              like one durable message, and nothing else.
# The figures are messages/s (goal >= 5,000/s over 8 connections; anchors: Connexion ~4.2 M
# messages/hour = ~1,170/s, Mirth one processing thread per channel by default) and
# messages/s / pgbench TPS (goal >= 0.5).
#
# usage: bench/mllp.sh            C=16 M=100000 bench/mllp.sh
# environment: C (connections, 8), M (timed messages, 40000), WARMUP (2000),
#              PGBENCH_SECONDS (15), RADIOLOGY_BENCH_PG_URL (admin URL), CARGO_TARGET_DIR;
#              RADIOLOGY_* settings of the service (e.g. RADIOLOGY_MLLP_BATCH_MAX) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
C="${C:-8}"
M="${M:-40000}"
WARMUP="${WARMUP:-2000}"
PGBENCH_SECONDS="${PGBENCH_SECONDS:-15}"
PG="${RADIOLOGY_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TENANT=6f1c2a44-0000-4000-8000-0000000b0002
DB=radiology_bench_mllp
PGB_DB=radiology_bench_mllp_pgbench
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -q
cargo build --release --locked -q --example mllp_load
BIN="$CARGO_TARGET_DIR/release/radiology"
LOAD="$CARGO_TARGET_DIR/release/examples/mllp_load"
for tool in psql pgbench curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian packages postgresql-client, curl, python3)" >&2; exit 1; }
done

WORK=$(mktemp -d -t radiology-bench-mllp.XXXXXX)
SERVE_PID=
stop_service() {
  if [ -n "$SERVE_PID" ]; then
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=
  fi
}
cleanup() {
  stop_service
  for db in "$DB" "$PGB_DB"; do
    psql "$PG" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# fresh_db NAME: drops and creates database NAME; prints its URL.
fresh_db() {
  psql "$PG" -qc "set client_min_messages = warning" -c "drop database if exists $1 with (force)" \
    -c "create database $1" >/dev/null
  echo "${PG%/*}/$1"
}

checkpoint() { psql "$PG" -qc checkpoint >/dev/null 2>&1 || true; }

# service_log: the service's stderr (RUST_LOG=warn), indented, on stderr.
service_log() {
  if [ -s "$WORK/serve.err" ]; then
    echo "service stderr ($(wc -l <"$WORK/serve.err") lines, last 40):" >&2
    tail -40 "$WORK/serve.err" | sed 's/^/  | /' >&2
  else
    echo "service stderr: empty" >&2
  fi
}

die() { echo "FAILED: $*" >&2; service_log; exit 1; }

# ticks PID: CPU clock ticks (user + system) PID has used; 0 when it is gone.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# cpu_snapshot: "<machine busy ticks> <service> <PG backends of $DB> <other PG processes>".
cpu_snapshot() {
  local busy svc pgb=0 pgo=0 p t
  busy=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
  svc=$(ticks "$SERVE_PID")
  for p in $(pgrep -x postgres); do
    t=$(ticks "$p")
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q " $DB "; then pgb=$((pgb + t)); else pgo=$((pgo + t)); fi
  done
  echo "$busy $svc $pgb $pgo"
}

printf '%s\n' "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); PostgreSQL $(psql "$PG" -Atqc 'show server_version') (synchronous_commit=$(psql "$PG" -Atqc 'show synchronous_commit'), fsync=$(psql "$PG" -Atqc 'show fsync'))"

# ---- the service -----------------------------------------------------------------------------
url=$(fresh_db "$DB")
HTTP_PORT=$(free_port)
MLLP_PORT=$(free_port)
mkdir -p "$WORK/data"
export RADIOLOGY_DATABASE_URL="$url" RADIOLOGY_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
       RADIOLOGY_MLLP_ADDR="127.0.0.1:$MLLP_PORT" RADIOLOGY_DATA_DIR="$WORK/data" \
       RADIOLOGY_JWT_SECRET=bench-mllp-jwt-secret-not-for-production-use \
       RADIOLOGY_SECRET_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
       RADIOLOGY_SYNC_ENABLED=false RUST_LOG=warn
"$BIN" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
BASE="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 120); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVE_PID" 2>/dev/null || die "the service exited before it was ready"
  sleep 0.25
done
curl -sf "$BASE/readyz" >/dev/null || die "the service was not ready after 30 s"

TOKEN=$("$BIN" token --tenant "$TENANT" --sub bench-mllp --roles radiology.admin --ttl 1h)
code=$(curl -s -o "$WORK/connector.json" -w '%{http_code}' -X POST "$BASE/v1/radiology/hl7-connectors" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"direction":"inbound","name":"bench RIS","sending_application":"RIS","sending_facility":"GENERAL_HOSP"}')
[ "$code" = 201 ] || die "creating the inbound connector answered HTTP $code: $(cat "$WORK/connector.json")"

# ---- warm-up, then statistics -------------------------------------------------------------------
# WARMUP messages (untimed) fill the tables a little; then ANALYZE gives the planner the
# statistics autovacuum would have gathered by then (autovacuum is OFF on this machine's
# PostgreSQL; a production server has it on).
"$LOAD" --addr "127.0.0.1:$MLLP_PORT" --connections "$C" --messages "$WARMUP" --warmup 0 --first 1 \
  --out "$WORK/acked-warmup.txt" >"$WORK/warmup.out" 2>"$WORK/warmup.err" || die "the warm-up failed: $(head -5 "$WORK/warmup.err")"
psql "$url" -qc 'analyze'

# ---- mllp: C connections, one message in flight each ------------------------------------------
checkpoint
before=$(cpu_snapshot)
t0=$(date +%s.%N)
set +e
# The load generator runs under a tiny wrapper that records its own CPU time.
# shellcheck disable=SC2016
python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime:.2f}\n")
sys.exit(rc)' "$WORK/load.cpu" \
  "$LOAD" --addr "127.0.0.1:$MLLP_PORT" --connections "$C" --messages "$M" --warmup 0 --first $((WARMUP + 1)) \
  --out "$WORK/acked-timed.txt" >"$WORK/load.out" 2>"$WORK/load.err"
load_rc=$?
set -e
cat "$WORK/acked-warmup.txt" "$WORK/acked-timed.txt" >"$WORK/acked.txt"
t1=$(date +%s.%N)
after=$(cpu_snapshot)
load_cpu=$(cat "$WORK/load.cpu" 2>/dev/null || echo 0)
summary=$(tail -1 "$WORK/load.out")
echo "mllp_load: $summary"
if [ -s "$WORK/load.err" ]; then
  echo "mllp_load stderr ($(wc -l <"$WORK/load.err") lines, first 20):" >&2
  head -20 "$WORK/load.err" | sed 's/^/  | /' >&2
fi
kill -0 "$SERVE_PID" 2>/dev/null || die "the service is no longer running after the load"
[ -s "$WORK/load.out" ] || die "mllp_load printed no summary (exit $load_rc)"

read -r busy0 svc0 pgb0 pgo0 <<<"$before"
read -r busy1 svc1 pgb1 pgo1 <<<"$after"
awk -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" -v cores="$(nproc)" -v ld="$load_cpu" \
    -v busy=$((busy1 - busy0)) -v svc=$((svc1 - svc0)) -v pgb=$((pgb1 - pgb0)) -v pgo=$((pgo1 - pgo0)) \
  'BEGIN { w = t1 - t0
           printf "cpu during the timed load (%.1f s; in cores of %d): service %.2f, mllp_load %.2f, PostgreSQL backends %.2f, other PostgreSQL processes %.2f, whole machine busy %.2f\n",
             w, cores, svc/hz/w, ld/w, pgb/hz/w, pgo/hz/w, busy/hz/w }'

# ---- no message lost --------------------------------------------------------------------------
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$summary" "$1"; }
MPS=$(field messages_per_second)
acked_total=$(wc -l <"$WORK/acked.txt")
psql "$url" -v ON_ERROR_STOP=1 -q \
  -c 'create temporary table acked(control_id text primary key)' \
  -c "\\copy acked from '$WORK/acked.txt'" \
  -c "\\copy (select a.control_id from acked a where not exists (select 1 from radiology.hl7_messages m where m.tenant_id = '$TENANT' and m.control_id = a.control_id and m.status = 'processed')) to '$WORK/missing.txt'"
missing=$(wc -l <"$WORK/missing.txt")
messages=$(psql "$url" -Atqc "select count(*) from radiology.hl7_messages where tenant_id = '$TENANT'")
processed=$(psql "$url" -Atqc "select count(*) from radiology.hl7_messages where tenant_id = '$TENANT' and status = 'processed'")
orders=$(psql "$url" -Atqc "select count(*) from radiology.orders where tenant_id = '$TENANT'")
echo "stored: $messages hl7_messages ($processed processed), $orders orders; $acked_total control ids acknowledged AA (warm-up included), $missing of them not stored as processed"
stop_service
if [ "$missing" != 0 ]; then
  echo "MESSAGES LOST: acknowledged AA but not in radiology.hl7_messages as processed (first 20):" >&2
  head -20 "$WORK/missing.txt" | sed 's/^/  | /' >&2
  die "$missing acknowledged message(s) lost"
fi
[ "$load_rc" = 0 ] || die "mllp_load reported failed messages (exit $load_rc; see its stderr above)"
[ "$acked_total" = $((M + WARMUP)) ] || die "$acked_total messages acknowledged AA, expected $((M + WARMUP))"
[ "$orders" = "$acked_total" ] || die "$orders orders stored for $acked_total new-order messages"
[ "$processed" = "$acked_total" ] || die "$processed processed messages stored for $acked_total acknowledged"
if grep -qiE 'error|panic' "$WORK/serve.err"; then
  echo "note: the service logged errors during the run:" >&2
  service_log
fi

# ---- limit: pgbench insert-only at the same concurrency ----------------------------------------
pgb_url=$(fresh_db "$PGB_DB")
psql "$pgb_url" -qc 'create table message (id bigserial primary key, received_at timestamptz not null default now(), body text not null)'
# ~500 bytes of hex text per row (16 × 32), different in every row.
echo "insert into message (body) values (repeat(md5(random()::text), 16));" >"$WORK/insert.sql"
checkpoint
pgbench -n -c "$C" -j 2 -T "$PGBENCH_SECONDS" -f "$WORK/insert.sql" "$pgb_url" >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" ||
  { cat "$WORK/pgbench.err" >&2; echo "pgbench failed" >&2; exit 1; }
TPS=$(awk '/^tps = / { print $3; exit }' "$WORK/pgbench.out")
[ -n "$TPS" ] || { cat "$WORK/pgbench.out" "$WORK/pgbench.err" >&2; echo "no tps in pgbench's output" >&2; exit 1; }
rows=$(psql "$pgb_url" -Atqc 'select count(*) from message')
echo "pgbench: $rows rows in ${PGBENCH_SECONDS} s, $(awk '/^latency average/ { print $4, $5 }' "$WORK/pgbench.out") average latency"

printf '%-12s %8s %10s %11s %14s %12s %10s %10s\n' connections messages seconds messages/s pgbench_tps ratio p50_ms p99_ms
awk -v c="$C" -v m="$M" -v s="$(field seconds)" -v r="$MPS" -v t="$TPS" -v p50="$(field latency_ms_p50)" -v p99="$(field latency_ms_p99)" \
  'BEGIN { printf "%-12d %8d %10.2f %11.0f %14.0f %12.2f %10.2f %10.2f\n", c, m, s, r, t, r/t, p50, p99 }'
echo "anchors: Connexion ~4.2 M messages/hour (~1,170 messages/s); Mirth: one processing thread per channel by default"
awk -v r="$MPS" -v t="$TPS" -v c="$C" 'BEGIN {
  q = r / t
  printf "goal: >= 5,000 messages/s over 8 connections: %s (%.0f over %d); >= 0.5x pgbench insert-only TPS: %s (%.2fx); no message lost: met\n",
    (r >= 5000 ? "met" : "NOT met"), r, c, (q >= 0.5 ? "met" : "NOT met"), q }'
