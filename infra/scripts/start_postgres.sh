#!/usr/bin/env bash
# Start a PostgreSQL cluster (Debian's `postgresql` binaries) on loopback, in the foreground (Ctrl-C
# stops it), with its data in DIR; creates the cluster with initdb on first use, and the databases
# named with --db once it is up. The cluster runs as a non-root user: as root, as PG_USER (default
# nightshift-pg, created when missing), who must be able to reach DIR.
#   infra/scripts/start_postgres.sh --data DIR [--port 5432] [--db NAME]...
# Connect with postgresql+psycopg2://postgres@127.0.0.1:PORT/NAME (trust auth, loopback only).
set -euo pipefail
PORT=5432
DATA=""
DBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --db) DBS+=("$2"); shift 2 ;;
    *) echo "usage: $0 --data DIR [--port PORT] [--db NAME]..." >&2; exit 2 ;;
  esac
done
[ -n "$DATA" ] || { echo "usage: $0 --data DIR [--port PORT] [--db NAME]..." >&2; exit 2; }
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$BIN/initdb" ] || { echo "PostgreSQL is not installed: make system-deps" >&2; exit 1; }
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
if [ "$(id -u)" = 0 ]; then
  PG_USER="${PG_USER:-nightshift-pg}"
  id -u "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" 2>/dev/null || id -u "$PG_USER" >/dev/null
  chown -R "$PG_USER" "$DATA"
  chmod 700 "$DATA"
  as_pg() { runuser -u "$PG_USER" -- "$@"; }
  as_pg test -x "$DATA" || { echo "$PG_USER cannot reach $DATA: every folder above it needs o+x" >&2; exit 1; }
else
  as_pg() { "$@"; }
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-instructions >"$DATA/../postgres-initdb.log" 2>&1 ||
    { cat "$DATA/../postgres-initdb.log" >&2; exit 1; }
fi
as_pg "$BIN/postgres" -D "$DATA" -p "$PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$DATA" -c max_connections=200 &
PG_PID=$!
stop() { as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast >/dev/null 2>&1 || kill "$PG_PID" 2>/dev/null || true; wait "$PG_PID" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 0' INT TERM
for _ in $(seq 1 120); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres && break
  kill -0 "$PG_PID" 2>/dev/null || exit 1
  sleep 0.5
done
for db in "${DBS[@]}"; do
  "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$db"
done
echo "postgres ready on 127.0.0.1:$PORT (data $DATA)"
wait "$PG_PID"
