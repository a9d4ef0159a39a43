#!/usr/bin/env bash
# Benchmark: QIDO-RS study sync from a loopback Orthanc into PostgreSQL.
#
# For each size N (default "1000 10000"): an Orthanc holding N studies (seeded once,
# kept under $BENCH_DIR), then in the same run
#   - plain:  a short Python client paging the same QIDO query, storing nothing;
#   - sync:   `radiology sync` (the service's sync engine) into a fresh PostgreSQL
#             database, with its wall time and peak RSS.
# The figure is sync time / plain paging time (goal ≤ 1.25), and peak RSS that stays
# flat as N grows.
#
# usage: bench/sync.sh            SIZES="1000 10000" bench/sync.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-1000 10000}"
PAGE="${PAGE:-100}"
PG="${RADIOLOGY_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/radiology-bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/radiology"
ORTHANC="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
[ -x "$ORTHANC" ] && [ -f "$PLUGIN" ] || { echo "needs Debian packages orthanc and orthanc-dicomweb" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '%s\n' "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $("$ORTHANC" --version | head -1); PostgreSQL $(psql "$PG" -Atqc 'show server_version')"
printf '%-8s %10s %12s %12s %10s %8s %14s\n' studies plain_s plain_st/s sync_s sync_st/s ratio sync_peak_MiB
for N in $SIZES; do
  dir="$BENCH_DIR/orthanc-$N"; mkdir -p "$dir"
  port=$(free_port)
  cat > "$dir/orthanc.json" <<JSON
{"Name": "bench-$N", "StorageDirectory": "$dir/db", "IndexDirectory": "$dir/db", "HttpPort": $port,
 "DicomServerEnabled": false, "DicomPort": $(free_port), "RemoteAccessAllowed": false,
 "AuthenticationEnabled": true, "RegisteredUsers": {"bench": "bench-pw"},
 "Plugins": ["$PLUGIN"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}
JSON
  "$ORTHANC" "$dir/orthanc.json" > "$dir/orthanc.log" 2>&1 &
  opid=$!
  trap 'kill $opid 2>/dev/null || true' EXIT
  for _ in $(seq 1 60); do curl -sf -u bench:bench-pw "http://127.0.0.1:$port/system" >/dev/null && break; sleep 0.5; done
  curl -sf -u bench:bench-pw "http://127.0.0.1:$port/system" >/dev/null || {
    echo "Orthanc did not start (is another one using $dir?):" >&2; tail -5 "$dir/orthanc.log" >&2; exit 1; }
  have=$(python3 bench/seed_orthanc.py "http://127.0.0.1:$port" bench bench-pw "$N")
  [ "$have" = "$N" ] || { echo "Orthanc holds $have studies, expected $N" >&2; exit 1; }
  dicomweb="http://127.0.0.1:$port/dicom-web"
  python3 bench/qido_page.py "$dicomweb" bench bench-pw "$PAGE" >/dev/null   # warm Orthanc's caches once

  read -r plain_n plain_s < <(python3 bench/qido_page.py "$dicomweb" bench bench-pw "$PAGE")

  db="radiology_bench_$N"
  psql "$PG" -qc "drop database if exists $db" -c "create database $db" >/dev/null
  url="${PG%/*}/$db"
  work=$(mktemp -d)
  export RADIOLOGY_DATABASE_URL="$url" RADIOLOGY_DATA_DIR="$work" RADIOLOGY_SYNC_PAGE_SIZE="$PAGE" \
         RADIOLOGY_SYNC_BACKFILL_SINCE=2010-01-01 RUST_LOG=warn
  "$BIN" sync >/dev/null   # migrates the new database
  psql "$url" -qc "insert into radiology.pacs_endpoints (id, tenant_id, node_id, name, qido_url, auth_mode, auth_config, active, created_at, updated_at)
                   values (gen_random_uuid(), gen_random_uuid(), 'bench', 'bench', '$dicomweb', 'basic', '{\"username\": \"bench\", \"password\": \"bench-pw\"}', true, now(), now())"
  read -r sync_s sync_mib < <(python3 bench/measure.py "$BIN" sync)
  stored=$(psql "$url" -Atqc "select count(*) from radiology.imaging_studies")
  [ "$stored" = "$N" ] || { echo "sync stored $stored of $N studies" >&2; exit 1; }
  [ "$plain_n" = "$N" ] || { echo "plain client saw $plain_n of $N studies" >&2; exit 1; }
  awk -v n="$N" -v p="$plain_s" -v s="$sync_s" -v m="$sync_mib" \
    'BEGIN { printf "%-8d %10.2f %12.0f %12.2f %10.0f %8.2f %14.1f\n", n, p, n/p, s, n/s, s/p, m }'
  psql "$PG" -qc "drop database if exists $db" >/dev/null
  rm -rf "$work"
  kill $opid 2>/dev/null || true; wait $opid 2>/dev/null || true
  trap - EXIT
done
