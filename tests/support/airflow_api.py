"""Airflow's REST API (v2) as the end-to-end tests drive it: a real api-server, its simple auth manager's token."""

from __future__ import annotations

import time
from pathlib import Path

DAG = "nightly_retrain"
MODELS = ("log-anomaly", "failure-rca", "metric-forecast")


class Api:
    """The api-server's REST API (v2) with a token from the simple auth manager."""

    def __init__(self, url: str, login: str, password: str):
        import requests

        self.url, self.http = url, requests.Session()
        token = self.http.post(f"{url}/auth/token", json={"username": login, "password": password}, timeout=30)
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def __call__(self, method: str, path: str, **kwargs) -> dict:
        r = self.http.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        assert r.status_code < 300, (method, path, r.status_code, r.text[:500])
        return r.json()

    def runs(self) -> list[dict]:
        return self("GET", f"/dags/{DAG}/dagRuns")["dag_runs"]

    def tasks(self, run_id: str) -> dict[str, dict]:
        return {t["task_id"]: t for t in self("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]}

    def wait_for_dag(self, timeout: float, logs: str) -> None:
        """Until the dag-processor has parsed and serialised the DAG (its page answers)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self("GET", f"/dags/{DAG}")
                return
            except AssertionError:
                assert time.monotonic() < deadline, f"DAG {DAG} never appeared; see {logs}"
                time.sleep(2)

    def wait(self, run_id: str, timeout: float, logs: Path) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        states = {k: (t["state"], t["try_number"]) for k, t in self.tasks(run_id).items()}
        raise AssertionError(f"run {run_id} not done after {timeout}s: {states}; logs in {logs}")
