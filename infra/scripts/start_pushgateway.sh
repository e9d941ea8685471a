#!/usr/bin/env bash
# Start a Pushgateway on loopback, in the foreground (Ctrl-C stops it).
#   infra/scripts/start_pushgateway.sh [--port 9091] [--persist FILE | --data DIR]
# With --persist FILE (or --data DIR: DIR/pushgateway.data) the pushed forecasts survive a restart.
# Without either it keeps them in memory only: Debian's build would otherwise persist to one
# system-wide file (/var/lib/prometheus/pushgateway.data) that every Pushgateway on the machine
# shares, so one test's or deployment's groups would show up in another's.
set -euo pipefail
PORT=9091
PERSIST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --persist) PERSIST="$2"; shift 2 ;;
    --data) mkdir -p "$2"; PERSIST="$(cd "$2" && pwd)/pushgateway.data"; shift 2 ;;
    *) echo "usage: $0 [--port PORT] [--persist FILE | --data DIR]" >&2; exit 2 ;;
  esac
done
command -v prometheus-pushgateway >/dev/null || { echo "prometheus-pushgateway is not installed: make system-deps" >&2; exit 1; }
exec prometheus-pushgateway --web.listen-address="127.0.0.1:${PORT}" --persistence.file="${PERSIST}"
