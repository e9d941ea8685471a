#!/usr/bin/env bash
# Start a real single-node Elasticsearch on 127.0.0.1, in the background, and print how to reach it.
#
#   infra/scripts/start_elasticsearch.sh [--dir DIR] [--port PORT] [--security on|off] [--setting KEY=VALUE]...
#   infra/scripts/start_elasticsearch.sh --stop DIR
#
# The node is Elastic's minimal distribution (org.elasticsearch.distribution.integ-test-zip, from Maven Central):
# server, transport, x-pack core and security, no bundled JDK, no data-streams/painless/reindex/ingest modules.
# The zip is fetched once with Maven and unpacked into $NIGHTSHIFT_ES_CACHE (default /var/tmp/nightshift-cache,
# outside git). All state of this node (config, keystore, data, logs, pid) lives under DIR (default: a new
# /tmp/nightshift-es.XXXX). Elasticsearch refuses to run as root, so as root the node runs as the user
# nightshift-es, created here, who owns the unpacked folder and DIR.
#
# --security on: basic auth for `elastic` (bootstrap password in the keystore) and for `nightshift` (a file-realm user
#   whose role reads and writes every index and installs templates), and a bearer token (a file-backed service token
#   of elastic/kibana, which authenticates but may read no log index). `elastic` can also store roles and issue API
#   keys through the security API: both need the .security index, whose settings name three analysis components of
#   the analysis-common module, which the zip lacks; a small plugin (infra/elasticsearch/test-node-plugin/), compiled
#   once against the node's own jars with a JDK's javac, provides them.
# off: no security.
# --setting: extra elasticsearch.yml lines, e.g. thread_pool.write.queue_size=2.
# On success DIR/node.env holds ES_URL, ES_USER, ES_PASSWORD, ES_SUPERUSER_PASSWORD, ES_BEARER_TOKEN, ES_PID, ES_DIR; the
# script prints it. `--stop DIR` stops that node (its data stays in DIR; a start with the same --dir reuses it).
set -euo pipefail

ES_VERSION="${NIGHTSHIFT_ES_VERSION:-9.5.4}"
CACHE="${NIGHTSHIFT_ES_CACHE:-/var/tmp/nightshift-cache}"
ES_USER_NAME=nightshift-es
DIR="" PORT="" SECURITY=off SETTINGS=()
HEAP="${NIGHTSHIFT_ES_HEAP:-512m}"

usage() { echo "usage: $0 [--dir DIR] [--port PORT] [--security on|off] [--setting KEY=VALUE]... | --stop DIR" >&2; exit 2; }

stop_node() {
  local dir="$1" pid
  [ -f "$dir/es.pid" ] || { echo "no Elasticsearch pid file in $dir" >&2; return 1; }
  pid="$(cat "$dir/es.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/es.pid"; return 0; }; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/es.pid"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --security) SECURITY="$2"; shift 2 ;;
    --setting) SETTINGS+=("$2"); shift 2 ;;
    --stop) stop_node "$2"; exit $? ;;
    *) usage ;;
  esac
done
case "$SECURITY" in on|off) ;; *) echo "--security must be on or off, not '$SECURITY'" >&2; exit 2 ;; esac

# A JDK >= 21 (Elasticsearch 9 needs it); the machine's default may be older.
find_jdk() {  # find_jdk [javac]: with `javac`, only a JDK that can compile
  local candidate major
  for candidate in ${ES_JAVA_HOME:-} ${JAVA_HOME:-} $(ls -d /usr/lib/jvm/* 2>/dev/null | sort -rV); do
    [ -x "$candidate/bin/java" ] || continue
    if [ "${1:-}" = javac ] && [ ! -x "$candidate/bin/javac" ]; then continue; fi
    major="$("$candidate/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')"
    if [ -n "$major" ] && [ "$major" -ge 21 ]; then echo "$candidate"; return 0; fi
  done
  return 1
}
JDK="$(find_jdk)" || { echo "no JDK >= 21 found (set ES_JAVA_HOME, or install one under /usr/lib/jvm)" >&2; exit 1; }

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # free_port

as_es() {  # run a command as the node's user (root cannot run Elasticsearch)
  if [ "$(id -u)" = 0 ]; then runuser -u "$ES_USER_NAME" -- "$@"; else "$@"; fi
}

# ---- fetch and unpack once ----------------------------------------------------------------------------------
mkdir -p "$CACHE"
chmod 1777 "$CACHE" 2>/dev/null || true
if [ "$(id -u)" = 0 ] && ! id "$ES_USER_NAME" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER_NAME" 2>/dev/null || id "$ES_USER_NAME" >/dev/null
fi
ES_HOME="$CACHE/elasticsearch-$ES_VERSION"
(
  flock 9
  if [ ! -x "$ES_HOME/bin/elasticsearch" ]; then
    ZIP="$CACHE/elasticsearch-$ES_VERSION.zip"
    if [ ! -s "$ZIP" ]; then
      command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch Elasticsearch $ES_VERSION" >&2; exit 1; }
      mvn -q dependency:copy -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" \
        -DoutputDirectory="$CACHE" >&2 || { echo "could not fetch Elasticsearch $ES_VERSION from Maven Central" >&2; exit 1; }
    fi
    rm -rf "$ES_HOME.partial" && mkdir -p "$ES_HOME.partial"
    unzip -q "$ZIP" -d "$ES_HOME.partial"
    mv "$ES_HOME.partial/elasticsearch-$ES_VERSION" "$ES_HOME" && rmdir "$ES_HOME.partial"
    if [ "$(id -u)" = 0 ]; then chown -R "$ES_USER_NAME" "$ES_HOME"; fi
  fi
) 9>"$CACHE/.elasticsearch-$ES_VERSION.lock"

# ---- the .security index's analysis components (see the header), built once per source change ---------------
PLUGIN_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../elasticsearch/test-node-plugin" && pwd)/SecurityIndexAnalysisPlugin.java"
PLUGIN_DIR="$ES_HOME/plugins/nightshift-security-analysis"
(
  flock 9
  stamp="# source sha256 $(sha256sum "$PLUGIN_SRC" | cut -d' ' -f1)"
  grep -qxF "$stamp" "$PLUGIN_DIR/plugin-descriptor.properties" 2>/dev/null && exit 0
  JAVAC_JDK="$(find_jdk javac)" || {
    # Without it the node still runs; only the security API's stored roles and API keys answer 400.
    echo "warning: no JDK >= 21 with javac: this node cannot store roles or issue API keys" >&2; exit 0; }
  BUILD="$ES_HOME/.plugin-build"  # outside plugins/: the node loads every folder there
  rm -rf "$BUILD" && mkdir -p "$BUILD/classes" "$BUILD/plugin"
  "$JAVAC_JDK/bin/javac" -nowarn --release 21 -cp "$ES_HOME/lib/*" -d "$BUILD/classes" "$PLUGIN_SRC" >&2
  "$JAVAC_JDK/bin/jar" cf "$BUILD/plugin/nightshift-security-analysis.jar" -C "$BUILD/classes" .
  cat > "$BUILD/plugin/plugin-descriptor.properties" <<EOF
$stamp
description=pattern_capture, unique and uax_url_email for the .security index (test nodes of the minimal distribution)
version=$ES_VERSION
name=nightshift-security-analysis
classname=nightshift.testnode.SecurityIndexAnalysisPlugin
java.version=21
elasticsearch.version=$ES_VERSION
EOF
  mkdir -p "$ES_HOME/plugins"
  rm -rf "$PLUGIN_DIR" && mv "$BUILD/plugin" "$PLUGIN_DIR" && rm -rf "$BUILD"
  if [ "$(id -u)" = 0 ]; then chown -R "$ES_USER_NAME" "$PLUGIN_DIR"; fi
) 9>"$CACHE/.elasticsearch-$ES_VERSION-plugin.lock"

# ---- this node's folder -------------------------------------------------------------------------------------
if [ -z "$DIR" ]; then DIR="$(mktemp -d /tmp/nightshift-es.XXXXXX)"; fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [ -f "$DIR/es.pid" ] && kill -0 "$(cat "$DIR/es.pid")" 2>/dev/null; then
  echo "an Elasticsearch node already runs from $DIR (pid $(cat "$DIR/es.pid")); stop it with $0 --stop $DIR" >&2; exit 1
fi
PORT="${PORT:-$(free_port)}"
TRANSPORT_PORT="$(free_port)"
CONF="$DIR/config"
if [ ! -d "$CONF" ]; then cp -r "$ES_HOME/config" "$CONF"; fi
mkdir -p "$DIR/data" "$DIR/logs"
{
  echo "cluster.name: nightshift-test"
  echo "node.name: node-1"
  echo "path.data: $DIR/data"
  echo "path.logs: $DIR/logs"
  echo "network.host: 127.0.0.1"
  echo "http.port: $PORT"
  echo "transport.port: $TRANSPORT_PORT"
  echo "discovery.type: single-node"
  echo "cluster.routing.allocation.disk.threshold_enabled: false"
  echo "action.destructive_requires_name: false"
  if [ "$SECURITY" = on ]; then
    echo "xpack.security.enabled: true"
    echo "xpack.security.http.ssl.enabled: false"
    echo "xpack.security.transport.ssl.enabled: false"
  else
    echo "xpack.security.enabled: false"
  fi
  for setting in "${SETTINGS[@]}"; do echo "${setting%%=*}: ${setting#*=}"; done
} > "$CONF/elasticsearch.yml"
cat > "$CONF/jvm.options.d/nightshift.options" <<EOF
-Xms$HEAP
-Xmx$HEAP
EOF
es_tool() { as_es env ES_JAVA_HOME="$JDK" ES_PATH_CONF="$CONF" "$ES_HOME/bin/$1" "${@:2}"; }
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }
PASSWORD="" USER_PASSWORD="" BEARER=""
if [ "$SECURITY" = on ] && [ ! -s "$DIR/.credentials" ]; then
  if [ "$(id -u)" = 0 ]; then chown -R "$ES_USER_NAME" "$DIR"; fi
  PASSWORD="$(secret)" USER_PASSWORD="$(secret)"
  es_tool elasticsearch-keystore create -s 2>/dev/null || true
  printf '%s' "$PASSWORD" | es_tool elasticsearch-keystore add -x -f -s bootstrap.password
  cat >> "$CONF/roles.yml" <<'EOF'
nightshift:
  cluster: [monitor, manage_index_templates]
  indices:
    - names: ["*"]
      privileges: [all]
EOF
  es_tool elasticsearch-users useradd nightshift -p "$USER_PASSWORD" -r nightshift 2>/dev/null
  BEARER="$(es_tool elasticsearch-service-tokens create elastic/kibana nightshift 2>/dev/null | sed -n 's/^SERVICE_TOKEN .* = //p')"
  (umask 077; printf '%s\n%s\n%s\n' "$PASSWORD" "$USER_PASSWORD" "$BEARER" > "$DIR/.credentials")
fi
if [ "$SECURITY" = on ]; then
  PASSWORD="$(sed -n 1p "$DIR/.credentials")" USER_PASSWORD="$(sed -n 2p "$DIR/.credentials")" BEARER="$(sed -n 3p "$DIR/.credentials")"
fi
if [ "$(id -u)" = 0 ]; then chown -R "$ES_USER_NAME" "$DIR"; fi

# ---- start and wait for readiness (GET / lives in a module this distribution lacks: use _cluster/health) -------
as_es env ES_JAVA_HOME="$JDK" ES_PATH_CONF="$CONF" "$ES_HOME/bin/elasticsearch" -d -p "$DIR/es.pid" \
  > "$DIR/logs/startup.out" 2>&1 || { echo "Elasticsearch did not start; see $DIR/logs/startup.out" >&2; tail -20 "$DIR/logs/startup.out" >&2; exit 1; }
URL="http://127.0.0.1:$PORT"
AUTH=()
if [ "$SECURITY" = on ]; then AUTH=(-u "elastic:$PASSWORD"); fi
for _ in $(seq 1 300); do
  if curl -fsS "${AUTH[@]}" "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then READY=1; break; fi
  if [ -f "$DIR/es.pid" ] && ! kill -0 "$(cat "$DIR/es.pid")" 2>/dev/null; then break; fi
  sleep 0.5
done
if [ -z "${READY:-}" ]; then
  echo "Elasticsearch at $URL did not become ready; its log is $DIR/logs/nightshift-test.log" >&2
  tail -30 "$DIR/logs/nightshift-test.log" >&2 2>/dev/null || true
  stop_node "$DIR" 2>/dev/null || true
  exit 1
fi
umask 077
cat > "$DIR/node.env" <<EOF
ES_URL=$URL
ES_USER=$( [ "$SECURITY" = on ] && echo nightshift )
ES_PASSWORD=$USER_PASSWORD
ES_SUPERUSER_PASSWORD=$PASSWORD
ES_BEARER_TOKEN=$BEARER
ES_PID=$(cat "$DIR/es.pid")
ES_DIR=$DIR
ES_VERSION=$ES_VERSION
EOF
cat "$DIR/node.env"
