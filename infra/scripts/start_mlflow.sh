#!/usr/bin/env bash
# Start an MLflow tracking server on loopback, in the foreground (Ctrl-C stops it), with its state
# in its own folder: the store (SQLite unless --backend-store-uri says otherwise, e.g. the
# PostgreSQL of infra/scripts/start_postgres.sh) and the artifacts it proxies (under DIR unless
# --artifacts-destination names an object store, e.g. s3://bucket/mlflow with the AWS_* variables and
# MLFLOW_S3_ENDPOINT_URL of infra/scripts/start_seaweedfs.sh in the environment).
#   infra/scripts/start_mlflow.sh [--port 5000] [--data DIR] [--backend-store-uri URI] [--artifacts-destination URI] [--workers 1]
#                                 [--auth none|basic] [--auth-db-uri URI] [--default-permission READ] [--auth-cache-ttl S]
# Clients then use MLFLOW_TRACKING_URI=http://127.0.0.1:PORT; the server proxies the artifacts, so they need no
# object-store credentials.
#
# --auth basic runs MLflow's basic-auth app (`mlflow server --app-name basic-auth`): every request but /health needs
# a user (clients send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). Its state is in DIR/auth/, mode 0700:
#   basic_auth.ini   written at each start: the user database (DIR/auth/basic_auth.db unless --auth-db-uri), the
#                    permission every user has where none was granted (--default-permission), the admin's name
#                    (MLFLOW_AUTH_ADMIN_USERNAME, default admin), how long a worker trusts a checked login
#                    (--auth-cache-ttl seconds: default 60 with one worker, whose own password changes and deletions
#                    apply at once; 0 with several, where another worker would keep a revoked login that long); never a
#                    password
#   secret-key       MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF) when the environment has none; generated once, mode 0600
#   admin-password   the admin's first password when MLFLOW_AUTH_ADMIN_PASSWORD is not set; generated once, mode 0600.
#                    MLflow reads it only while the admin user does not exist yet (docs/deployment.md: changing it)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
PORT=5000
DATA="${NIGHTSHIFT_HOME:-$HOME/.nightshift}/mlflow-server"
STORE=""
ARTIFACTS=""
WORKERS=1
AUTH=none
AUTH_DB=""
DEFAULT_PERMISSION=READ
CACHE_TTL=""
usage="usage: $0 [--port PORT] [--data DIR] [--backend-store-uri URI] [--artifacts-destination URI] [--workers N]"
usage+=" [--auth none|basic] [--auth-db-uri URI] [--default-permission READ|EDIT|MANAGE|NO_PERMISSIONS] [--auth-cache-ttl S]"
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --backend-store-uri) STORE="$2"; shift 2 ;;
    --artifacts-destination) ARTIFACTS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --auth) AUTH="$2"; shift 2 ;;
    --auth-db-uri) AUTH_DB="$2"; shift 2 ;;
    --default-permission) DEFAULT_PERMISSION="$2"; shift 2 ;;
    --auth-cache-ttl) CACHE_TTL="$2"; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case "$AUTH" in none|basic) ;; *) echo "start_mlflow.sh: --auth must be none or basic, not '$AUTH'" >&2; exit 2 ;; esac
case "$DEFAULT_PERMISSION" in READ|EDIT|MANAGE|NO_PERMISSIONS) ;;
  *) echo "start_mlflow.sh: --default-permission must be READ, EDIT, MANAGE or NO_PERMISSIONS, not '$DEFAULT_PERMISSION'" >&2; exit 2 ;;
esac
[ -n "$CACHE_TTL" ] || { [ "$WORKERS" = 1 ] && CACHE_TTL=60 || CACHE_TTL=0; }
case "$CACHE_TTL" in ''|*[!0-9]*) echo "start_mlflow.sh: --auth-cache-ttl must be whole seconds, not '$CACHE_TTL'" >&2; exit 2 ;; esac
mkdir -p "$DATA/artifacts"
DATA="$(cd "$DATA" && pwd)"
APP=()
if [ "$AUTH" = basic ]; then
  AUTH_DIR="$DATA/auth"
  (umask 077 && mkdir -p "$AUTH_DIR")
  chmod 700 "$AUTH_DIR"
  # A secret drawn once and kept in FILE (mode 0600, never printed); prints it for the caller to export.
  kept_secret() {
    local file="$1"
    if [ ! -s "$file" ]; then
      (umask 077 && "$(dirname "$MLFLOW")/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$file.tmp")
      mv "$file.tmp" "$file"
    fi
    chmod 600 "$file"
    head -n 1 "$file"
  }
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(kept_secret "$AUTH_DIR/secret-key")"
  fi
  ADMIN="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
  if [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
    MLFLOW_AUTH_ADMIN_PASSWORD="$(kept_secret "$AUTH_DIR/admin-password")"
    WHERE="the password is in $AUTH_DIR/admin-password"
  else
    WHERE="the password is MLFLOW_AUTH_ADMIN_PASSWORD's"
  fi
  (umask 077 && cat >"$AUTH_DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = $DEFAULT_PERMISSION
database_uri = ${AUTH_DB:-sqlite:///$AUTH_DIR/basic_auth.db}
admin_username = $ADMIN
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $CACHE_TTL
INI
  )
  export MLFLOW_AUTH_CONFIG_PATH="$AUTH_DIR/basic_auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_ADMIN_PASSWORD
  echo "start_mlflow.sh: basic auth on ($AUTH_DIR/basic_auth.ini); admin user '$ADMIN', $WHERE" >&2
  APP=(--app-name basic-auth)
fi
exec "$MLFLOW" server --backend-store-uri "${STORE:-sqlite:///$DATA/mlflow.db}" --artifacts-destination "${ARTIFACTS:-$DATA/artifacts}" \
  --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" "${APP[@]}"
