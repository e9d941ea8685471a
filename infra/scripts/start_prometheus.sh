#!/usr/bin/env bash
# Start Prometheus on loopback, in the foreground (Ctrl-C stops it), with infra/prometheus/
# (prometheus.yml and the alert rules), scraping the Pushgateway the forecasts go to.
#   infra/scripts/start_prometheus.sh [--port 9090] [--pushgateway 127.0.0.1:9091] [--data DIR]
#                                     [--backfill FILE.om] [--scrape-interval 15s] [--web-config FILE]
# --backfill loads an OpenMetrics history first (the demo's: $NIGHTSHIFT_HOME/demo/metrics.om,
# written by `nightshift demo-data`) with `promtool tsdb create-blocks-from openmetrics`.
# --web-config is Prometheus's own web configuration file (TLS, basic auth users).
# Retention is long because a backfilled history may be older than the default 15 days.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PORT=9090
PUSHGATEWAY=127.0.0.1:9091
DATA="${NIGHTSHIFT_HOME:-$HOME/.nightshift}/prometheus"  # its own folder, under the deployment's home
BACKFILL=""
SCRAPE=15s
WEB=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --pushgateway) PUSHGATEWAY="${2#http://}"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --backfill) BACKFILL="$(realpath "$2")"; shift 2 ;;
    --scrape-interval) SCRAPE="$2"; shift 2 ;;
    --web-config) WEB=(--web.config.file="$(realpath "$2")"); shift 2 ;;
    *) echo "usage: $0 [--port PORT] [--pushgateway HOST:PORT] [--data DIR] [--backfill FILE.om] [--scrape-interval 15s] [--web-config FILE]" >&2; exit 2 ;;
  esac
done
command -v prometheus >/dev/null || { echo "prometheus is not installed: make system-deps" >&2; exit 1; }
mkdir -p "$DATA/tsdb"
DATA="$(cd "$DATA" && pwd)"
sed -e "s|127.0.0.1:9091|${PUSHGATEWAY}|" \
    -e "s|127.0.0.1:9090|127.0.0.1:${PORT}|" \
    -e "s|^\(  *\)scrape_interval: .*|\1scrape_interval: ${SCRAPE}|" \
    -e "s|^\(  *\)evaluation_interval: .*|\1evaluation_interval: ${SCRAPE}|" \
    -e "s|- rules/|- ${ROOT}/infra/prometheus/rules/|" \
    "$ROOT/infra/prometheus/prometheus.yml" > "$DATA/prometheus.yml"
if [ -n "$BACKFILL" ]; then
  (cd "$ROOT" && "$PY" -c 'import sys; from pipelines.sources.prometheus import backfill_openmetrics; print(backfill_openmetrics(sys.argv[1], sys.argv[2]), "samples loaded")' "$BACKFILL" "$DATA/tsdb") >&2
fi
exec prometheus --config.file="$DATA/prometheus.yml" --storage.tsdb.path="$DATA/tsdb" \
  --storage.tsdb.retention.time=10y --web.listen-address="127.0.0.1:${PORT}" "${WEB[@]}"
