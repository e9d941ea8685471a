#!/usr/bin/env bash
# The nightly retrain on a real Elasticsearch (`make demo-es`): a single node with security on, on a free loopback
# port; the index template installed; the demo corpus bulk-loaded into daily `logs-YYYY.MM.DD` indices; one night
# with the node as the log source, scores written back into the indices; scoring run again, which writes nothing;
# then the counts and a query that returns scored documents. The node stops when the script ends, unless KEEP_ES=1.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
NS="$ROOT/.venv/bin/nightshift"
export NIGHTSHIFT_HOME="${NIGHTSHIFT_HOME:-$HOME/.nightshift}/demo-es"
DEMO="$NIGHTSHIFT_HOME/demo"

echo "starting Elasticsearch (security on)…"
ES_DIR="$(mktemp -d /tmp/nightshift-es-demo.XXXXXX)"
bash "$ROOT/infra/scripts/start_elasticsearch.sh" --security on --dir "$ES_DIR" >/dev/null
if [ "${KEEP_ES:-0}" != 1 ]; then
  trap 'bash "$ROOT/infra/scripts/start_elasticsearch.sh" --stop "$ES_DIR"; rm -rf "$ES_DIR"' EXIT
else
  trap 'echo "the node keeps running (KEEP_ES=1): its settings are in $ES_DIR/node.env; stop it with: bash infra/scripts/start_elasticsearch.sh --stop $ES_DIR"' EXIT
fi
set -a; . "$ES_DIR/node.env"; set +a
export NIGHTSHIFT_ELASTICSEARCH_USERNAME="$ES_USER" NIGHTSHIFT_ELASTICSEARCH_PASSWORD="$ES_PASSWORD"
echo "Elasticsearch $ES_VERSION at $ES_URL (user $ES_USER)"

"$NS" es install-template --url "$ES_URL" --index-pattern 'logs-*'
"$NS" demo-data --out "$DEMO" >/dev/null
CORPUS="$(ls "$DEMO"/*.ndjson | head -1)"
"$PY" - "$CORPUS" <<'EOF'
import json, os, sys
from elasticsearch import Elasticsearch, helpers

client = Elasticsearch(os.environ["ES_URL"], basic_auth=(os.environ["ES_USER"], os.environ["ES_PASSWORD"]), request_timeout=120)
def actions(path):
    with open(path) as f:
        for line in f:
            doc = json.loads(line)
            yield {"_op_type": "create", "_index": "logs-" + doc["@timestamp"][:10].replace("-", "."), "_source": doc}
ok, errors = helpers.bulk(client, actions(sys.argv[1]), chunk_size=5000, raise_on_error=False)
client.indices.refresh(index="logs-*")
print(f"loaded {ok} documents into logs-* ({len(errors)} failed)")
EOF

# The night after the corpus's newest day (for a configured source the default is today).
NEWEST="$("$PY" - <<'EOF'
import os
from elasticsearch import Elasticsearch
c = Elasticsearch(os.environ["ES_URL"], basic_auth=(os.environ["ES_USER"], os.environ["ES_PASSWORD"]))
print(c.search(index="logs-*", size=0, aggs={"t": {"max": {"field": "@timestamp"}}})["aggregations"]["t"]["value_as_string"][:10])
EOF
)"
DAY_START="$NEWEST"
DAY_END="$("$PY" -c "import datetime as d; print((d.date.fromisoformat('$NEWEST') + d.timedelta(days=1)).isoformat())")"

echo
echo "the night $DAY_END, with logs from $ES_URL/logs-* …"
NIGHTSHIFT_RETRAIN_LOG_SOURCE="$ES_URL/logs-*" NIGHTSHIFT_RETRAIN_LOGICAL_DATE="$DAY_END" "$NS" retrain

echo
echo "scoring the fresh day again ($DAY_START): nothing is left to write"
"$NS" score logs --model log-anomaly@champion --source "$ES_URL/logs-*" --start "$DAY_START" --end "$DAY_END"

echo
QUERY='{"size": 3, "query": {"bool": {"filter": [{"term": {"ml.anomaly.is_anomaly": true}}]}}, "_source": ["@timestamp", "message", "ml"]}'
curl -s -u "$ES_USER:$ES_PASSWORD" "$ES_URL/logs-*/_count" -H 'Content-Type: application/json' \
  -d '{"query": {"exists": {"field": "ml.model.name"}}}' | "$PY" -c 'import json, sys; print("scored documents:", json.load(sys.stdin)["count"])'
curl -s -u "$ES_USER:$ES_PASSWORD" "$ES_URL/logs-*/_count" | "$PY" -c 'import json, sys; print("all documents:   ", json.load(sys.stdin)["count"])'
echo "anomalous documents, as an SRE would ask for them:"
echo "  curl -u \$ES_USER:\$ES_PASSWORD '$ES_URL/logs-*/_search' -H 'Content-Type: application/json' -d '$QUERY'"
curl -s -u "$ES_USER:$ES_PASSWORD" "$ES_URL/logs-*/_search" -H 'Content-Type: application/json' -d "$QUERY" |
  "$PY" -c 'import json, sys
for h in json.load(sys.stdin)["hits"]["hits"]:
    s = h["_source"]; ml = s["ml"]
    print("  %s  score=%.3f  %s v%s  %s" % (s["@timestamp"], ml["anomaly"]["score"], ml["model"]["name"], ml["model"]["version"], s["message"].splitlines()[0][:70]))'
