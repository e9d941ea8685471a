"""Online answers: p50/p99 latency and throughput of `nightshift serve`'s `/v1/log-anomaly` at batch
sizes 1 and 64, against the pure forward pass and against `mlflow models serve` of the same
registered version (a MiniLM BERT, one epoch), in the same run on the same texts. Both servers load the version's
pyfunc, so both run its int8 graph where its registration check passed (`score.runtime`), and the forward pass
column is that runtime's."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_scoring import _corpus, _register  # noqa: E402  (one way to train the benchmarked version)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def _latencies(call, batches: list[list[str]], concurrency: int = 1) -> tuple[np.ndarray, float]:
    """(seconds per call, texts per second over the whole run)."""
    def timed(batch):
        started = time.perf_counter()
        call(batch)
        return time.perf_counter() - started

    call(batches[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        seconds = np.array(list(pool.map(timed, batches)))
    return seconds, sum(map(len, batches)) / (time.perf_counter() - started)


def run(quick: bool = False) -> list[dict]:
    import requests

    from pipelines.config import load_settings
    from pipelines.registry.store import load_model, use_store
    from pipelines.telemetry import configure_logging
    from serving.auth import make_key

    configure_logging(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["NIGHTSHIFT_HOME"] = str(work / "home")
        settings = load_settings()
        settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, epochs=1, max_train_examples=300),
                                       candidates=dataclasses.replace(settings.candidates, families="bert"))  # the BERT path
        ref = _register(settings, _corpus(work / "train.ndjson", 3000), None, work)
        texts = [json.loads(line)["message"] for line in _corpus(work / "requests.ndjson", 4000, distinct=True, seed=5).open()]
        calls = {1: 40 if quick else 1000, 64: 8 if quick else 40}  # p99 of 1,000 calls: the 10th slowest, not the 2nd
        batches = {size: [texts[i * size:(i + 1) * size] for i in range(n)] for size, n in calls.items()}

        clf = load_model(use_store(settings), ref)[1].unwrap_python_model()
        key = make_key(work / "home" / "api-keys", "bench", {"score"})
        env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": settings.mlflow_uri,
               "NIGHTSHIFT_SERVE_MODELS": "log-anomaly", "NIGHTSHIFT_LOG_LEVEL": "WARNING",
               "NIGHTSHIFT_SERVE_RATE_LIMIT": ""}  # the benchmark's clients are one caller at full speed
        ours, theirs = _free_port(), _free_port()
        servers = [subprocess.Popen([sys.executable, "-m", "nightshift.cli", "serve", "--port", str(ours), "--log-level", "warning"],
                                    env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                   subprocess.Popen([str(ROOT / ".venv" / "bin" / "mlflow"), "models", "serve", "-m", f"models:/{ref}", "--env-manager", "local",
                                     "--host", "127.0.0.1", "--port", str(theirs)],
                                    env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            _wait(f"http://127.0.0.1:{ours}/readyz", servers[0])
            _wait(f"http://127.0.0.1:{theirs}/health", servers[1])
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {key}"  # mlflow models serve ignores it

            def nightshift(batch):
                r = session.post(f"http://127.0.0.1:{ours}/v1/log-anomaly", json={"texts": batch}, timeout=120)
                r.raise_for_status()

            def mlflow_serve(batch):
                r = session.post(f"http://127.0.0.1:{theirs}/invocations", timeout=120,
                                 json={"dataframe_split": {"columns": ["message"], "data": [[t] for t in batch]}})
                r.raise_for_status()

            rows = []
            for size in (1, 64):
                forward, forward_tps = _latencies(lambda b: clf.probabilities(b, 64), batches[size])
                served, served_tps = _latencies(nightshift, batches[size])
                baseline, baseline_tps = _latencies(mlflow_serve, batches[size])
                for q in (50, 99):
                    rows.append({"name": f"serve /v1/log-anomaly, batch {size}, p{q} latency", "value": 1000 * np.percentile(served, q),
                                 "unit": "ms", "baseline": "mlflow models serve, same version",
                                 "baseline_value": 1000 * np.percentile(baseline, q),
                                 "ratio": np.percentile(served, q) / np.percentile(baseline, q),
                                 "extra": {"forward pass ms": 1000 * np.percentile(forward, q)}})
                rows.append({"name": f"serve /v1/log-anomaly, batch {size}, one client", "value": served_tps, "unit": "texts/s",
                             "baseline": "mlflow models serve, same version", "baseline_value": baseline_tps, "ratio": served_tps / baseline_tps,
                             "extra": {"forward pass texts/s": forward_tps}})
            # Eight clients sending one text each: requests batched together vs one forward pass per request.
            served, served_tps = _latencies(nightshift, batches[1], concurrency=8)
            baseline, baseline_tps = _latencies(mlflow_serve, batches[1], concurrency=8)
            rows.append({"name": "serve /v1/log-anomaly, batch 1, eight clients", "value": served_tps, "unit": "texts/s",
                         "baseline": "mlflow models serve, same version", "baseline_value": baseline_tps, "ratio": served_tps / baseline_tps,
                         "extra": {"p50 ms": 1000 * np.percentile(served, 50), "baseline p50 ms": 1000 * np.percentile(baseline, 50)}})
            return [{**r, "value": float(r["value"]), "baseline_value": float(r["baseline_value"]), "ratio": float(r["ratio"]),
                     "section": "Online serving", "extra": {k: float(v) for k, v in r["extra"].items()}} for r in rows]
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
