"""The name a worker gives Airflow: the `hostname` recorded on every task instance it runs.

On its own machine a worker is named by the machine (Airflow's default, the FQDN). Several workers on one machine
(`make demo-cluster`, tests/e2e/test_celery_e2e.py) each set `NIGHTSHIFT_WORKER_NAME` and point Airflow here with
`AIRFLOW__CORE__HOSTNAME_CALLABLE=pipelines.worker.hostname`, so that where each task ran stays visible.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """`NIGHTSHIFT_WORKER_NAME` when set, else this machine's fully qualified domain name."""
    return os.environ.get("NIGHTSHIFT_WORKER_NAME") or socket.getfqdn()
