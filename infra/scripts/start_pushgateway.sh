#!/usr/bin/env bash
# Start a Pushgateway on loopback, in the foreground (Ctrl-C stops it).
#   infra/scripts/start_pushgateway.sh [--port 9091] [--persist FILE]
# With --persist the pushed forecasts survive a restart.
set -euo pipefail
PORT=9091
PERSIST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --persist) PERSIST=(--persistence.file="$2"); shift 2 ;;
    *) echo "usage: $0 [--port PORT] [--persist FILE]" >&2; exit 2 ;;
  esac
done
command -v prometheus-pushgateway >/dev/null || { echo "prometheus-pushgateway is not installed: make system-deps" >&2; exit 1; }
exec prometheus-pushgateway --web.listen-address="127.0.0.1:${PORT}" "${PERSIST[@]}"
