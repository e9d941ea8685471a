"""What the tests and the benchmarks share: fakes (`fakes`), snapshots with known faults (`drift_cases`), the demo
metric history (`metric_history`), a night as the flow leaves it (`nights`), the CLI run in its own process (`cli`),
and real servers on free loopback ports (`es_cluster`, `es_proxy`, `mlflow_server`, `prom_servers`).

Imported as `tests.support.…` with the repository root on sys.path: pytest's `pythonpath` setting puts it there for
the tests, benchmarks/run.py (and the benchmarks that run on their own) for the benchmarks."""
