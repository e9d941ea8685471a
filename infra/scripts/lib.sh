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
