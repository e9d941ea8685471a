# Shell functions the start scripts share (sourced, never run on its own). BIN, when set, is the venv's bin folder.

# A free TCP port on loopback (the kernel's pick; the caller binds it right after).
free_port() { "${BIN:+$BIN/}python3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for WHAT PID LOG COMMAND...: until COMMAND succeeds (up to 300 s); fails early, with LOG's tail, if PID exits.
wait_for() {
  local what="$1" pid="$2" log="$3"; shift 3
  for _ in $(seq 1 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$what exited; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.5
  done
  echo "$what not ready after 300s; see $log" >&2; exit 1
}

# mlflow_job_user ADMIN_PASSWORD_FILE LOG: the MLflow user `nightshift-job` with password $MLFLOW_TRACKING_PASSWORD, made
# by the admin on $MLFLOW_TRACKING_URI if missing (passwords through the environment, never the command line); the
# user then manages the experiment and the models its tasks create. Output to LOG; exits on failure.
mlflow_job_user() {
  JOB_PASSWORD="$MLFLOW_TRACKING_PASSWORD" MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat "$1")" \
    "$BIN/python" -c '
import os
import mlflow.server
from mlflow.exceptions import MlflowException
auth = mlflow.server.get_app_client("basic-auth", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
try:
    auth.get_user("nightshift-job")
except MlflowException:
    auth.create_user("nightshift-job", os.environ["JOB_PASSWORD"])
' >>"$2" 2>&1 || { echo "could not make the MLflow user nightshift-job; see $2" >&2; exit 1; }
}
