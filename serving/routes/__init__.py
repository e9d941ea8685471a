"""The routes of `nightshift serve`, one `APIRouter` per concern; `serving.server.create_app` includes each with the
API key scope it needs (`serving/auth.py`), and refuses to start with a route that has no key check.

- `health`: `/healthz` and `/readyz` (no key: the probes), `/metrics` (any key, or none with serve.metrics_public)
- `log_anomaly`, `failure_rca`, `metric_forecast`: `POST /v1/<model>`, each model's answer (scope `score`)
- `predict`: the PyTorch_pro demos' `POST /predict` shapes, answered by the same code as the `/v1` routes (scope `score`)
- `admin`: `POST /v1/admin/reload` (scope `admin`)
- `alerts`: Alertmanager's webhook `POST /v1/alerts` (scope `alerts`; what it does: `serving/alerts.py`)

A route reaches the app's `Server` (`serving/state.py`) through the dependency `CurrentServer`.
"""
