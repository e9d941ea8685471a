#!/usr/bin/env bash
# The forecasting demo on real servers: a Pushgateway and a Prometheus backfilled with the demo
# metric history, on free loopback ports; `nightshift forecast` from the end of that history with
# the metric-forecast champion (run `make demo` first); then the forecasts read back from
# Prometheus with PromQL. Both servers stop when the script ends.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
NS="$ROOT/.venv/bin/nightshift"
STATE="${NIGHTSHIFT_HOME:-$HOME/.nightshift}"
HISTORY="$STATE/demo/metrics.om"
[ -f "$HISTORY" ] || "$NS" demo-data --out "$STATE/demo"
WORK="$(mktemp -d)"
port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PG_PORT="$(port)"
PROM_PORT="$(port)"
bash "$ROOT/infra/scripts/start_pushgateway.sh" --port "$PG_PORT" >"$WORK/pushgateway.log" 2>&1 &
PG_PID=$!
bash "$ROOT/infra/scripts/start_prometheus.sh" --port "$PROM_PORT" --pushgateway "127.0.0.1:$PG_PORT" --data "$WORK/prometheus" \
  --backfill "$HISTORY" --scrape-interval 5s >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
trap 'kill "$PG_PID" "$PROM_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "loading the demo history into Prometheus on 127.0.0.1:$PROM_PORT (promtool, about half a minute)…"
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null && curl -sf "http://127.0.0.1:$PG_PORT/-/ready" >/dev/null && break
  kill -0 "$PROM_PID" 2>/dev/null || { cat "$WORK/prometheus.log" >&2; exit 1; }
  sleep 0.5
done
AT="$(cd "$ROOT" && "$PY" -c 'from pipelines.data.demo_metrics import METRICS_END; print(METRICS_END.isoformat())')"
"$NS" forecast --model metric-forecast@champion --prometheus "http://127.0.0.1:$PROM_PORT" \
  --pushgateway "http://127.0.0.1:$PG_PORT" --at "$AT"
sleep 7  # one scrape of the Pushgateway
echo
echo 'ai_forecast_quota_group_use_ratio{horizon="2h"} in Prometheus:'
curl -sG "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=ai_forecast_quota_group_use_ratio{horizon="2h"}' |
  "$PY" -c 'import json, sys
for r in sorted(json.load(sys.stdin)["data"]["result"], key=lambda r: (r["metric"]["group"], r["metric"]["quantile"])):
    m = r["metric"]
    print("  group=%-12s quantile=%s  %.3f" % (m["group"], m["quantile"], float(r["value"][1])))'
