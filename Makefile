# nightshift: `make demo` runs the nightly retrain once on the embedded corpus; `make test` runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
NS := $(VENV)/bin/nightshift
# The state folder: the CLI's own default, so that `nightshift` after `make demo` finds the same store.
export NIGHTSHIFT_HOME ?= $(HOME)/.nightshift
# pip's site config lists local indexes that lack most packages; its notes about them are noise.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup lock system-deps airflow es-deps es demo demo-es demo-forecast demo-cluster docs lint test test-fast test-integration test-e2e bench serve ui clean

setup: $(VENV)/.installed

# The virtual environment holds exactly uv.lock (the dev extra included): `uv sync --locked` installs the lock as it
# is, removes anything else, and stops when pyproject.toml has changed since the lock. uv itself is bootstrapped at the
# version the lock pins.
UV_VERSION := 0.13.9
UV := UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv
$(VENV)/.installed: pyproject.toml uv.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PY) -m pip install -q uv==$(UV_VERSION) 2>&1 | $(QUIET_PIP)
	$(UV) sync --locked --extra dev --python $(PY)
	touch $@

# Re-resolve uv.lock after changing a dependency in pyproject.toml (or to take newer releases), then run `make test`
# and commit both files. `make test` fails while pyproject.toml and uv.lock disagree.
lock:
	test -x $(VENV)/bin/uv || { test -x $(PY) || python3.11 -m venv $(VENV); $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(UV) lock $(if $(UPGRADE),--upgrade)

# Debian packages for the real servers the tests start (Prometheus, Pushgateway, Alertmanager).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-pushgateway prometheus-alertmanager >/dev/null; \
	  else echo "need root to apt-get install prometheus prometheus-pushgateway prometheus-alertmanager" >&2; fi; fi
	@# PostgreSQL, the Airflow deployment's metadata database (make airflow, tests/e2e/test_airflow_e2e.py), and its drivers
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "need root to apt-get install postgresql" >&2; fi; fi
	@# Redis, the Celery broker of the multi-machine deployment (make demo-cluster, tests/e2e/test_celery_e2e.py)
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "need root to apt-get install redis-server" >&2; fi; fi
	@# Debian's Chromium, headless: the browser test renders the night, validation and drift reports (tests/integration/test_report_browser.py)
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "need root to apt-get install chromium" >&2; fi; fi
	@# systemd-analyze checks the systemd units (tests/unit/test_deployment.py, tests/integration/test_deployment_playbook.py)
	@if ! command -v systemd-analyze >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	  else echo "need root to apt-get install systemd" >&2; fi; fi

# A person reads what `make demo` prints, piped or not: log lines in the console form, not JSON.
demo: export NIGHTSHIFT_LOG_FORMAT ?= console
demo: setup
	$(NS) demo-data --out $(NIGHTSHIFT_HOME)/demo
	$(NS) retrain
	@echo
	@echo "Next: open the night report  $(NIGHTSHIFT_HOME)/runs/$$(ls $(NIGHTSHIFT_HOME)/runs | tail -1)/report.html"
	@echo "      make ui     the MLflow UI on http://127.0.0.1:5000 (runs, versions, why each was promoted)"
	@echo "      make serve  the champions over HTTP, with a key and a curl line to try"

# Elasticsearch for the tests, `make es` and `make demo-es`: Elastic's minimal distribution from Maven Central needs
# Maven, unzip and a JDK >= 21 (the machine's default may be 17); the zip is fetched once into a cache outside git.
es-deps:
	@command -v mvn >/dev/null && command -v unzip >/dev/null && command -v curl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven unzip curl >/dev/null; \
	  else echo "need root to apt-get install maven unzip curl" >&2; exit 1; fi; }
	@ls /usr/lib/jvm/*/bin/javac 2>/dev/null | while read -r j; do "$${j%c}" -XshowSettings:properties -version 2>&1 | \
	  sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p'; done | awk '$$1 >= 21 {ok=1} END {exit !ok}' || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-21-jdk-headless >/dev/null; \
	  else echo "need a JDK >= 21 (with javac: the test node's security-index plugin is compiled) under /usr/lib/jvm" >&2; exit 1; fi; }

# A real Elasticsearch node for a person, security on, on a free loopback port: prints its URL and credentials.
# It keeps running; stop it with: infra/scripts/start_elasticsearch.sh --stop DIR (DIR is printed as ES_DIR).
es: es-deps
	@bash infra/scripts/start_elasticsearch.sh --security on $${ES_DIR:+--dir $$ES_DIR}

# The nightly retrain against a real Elasticsearch: load the demo corpus, retrain, score back, score again (writes nothing).
demo-es: setup es-deps
	bash infra/scripts/demo_es.sh

# The tests by cost: tests/unit (in-process, no real server), tests/integration (real servers: Elasticsearch,
# Prometheus, Pushgateway, MLflow, PostgreSQL, uvicorn, Chromium, promtool), tests/e2e (whole nights).
# `make test` (CI) lints, then runs all three; `make test-fast` runs the unit layer less its `slow` tests (under 2 min).
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

test: setup system-deps es-deps lint
	$(PY) -m pytest -q

test-fast: setup system-deps
	$(PY) -m pytest -q tests/unit -m "not slow"

test-integration: setup system-deps es-deps
	$(PY) -m pytest -q tests/integration

test-e2e: setup system-deps es-deps
	$(PY) -m pytest -q tests/e2e

# Forecasts on real servers: Prometheus (backfilled with the demo metrics) and a Pushgateway on free
# loopback ports, `nightshift forecast` with the champion from `make demo`, read back with PromQL.
demo-forecast: setup system-deps
	bash infra/scripts/demo_forecast.sh

bench: setup system-deps
	$(PY) benchmarks/run.py

# docs/configuration.md, every setting with its default and help, generated from pipelines/config.py (run it after
# changing a setting; tests/unit/test_config_docs.py fails while the page is stale).
docs: setup
	$(PY) -m pipelines.config_docs

# A local Airflow deployment of the nightly DAG on loopback: PostgreSQL, an MLflow server behind its basic-auth app
# (the tasks log in as nightshift-job), the api-server, scheduler (LocalExecutor) and dag-processor; prints the UI's
# URL and login, never MLflow's passwords (files under $(NIGHTSHIFT_HOME)/deployment/mlflow/auth/). Ctrl-C stops it.
airflow: setup system-deps
	bash infra/scripts/start_airflow.sh --port $${PORT:-8080}

# The deployment at scale, on loopback: PostgreSQL, Redis, SeaweedFS (S3), an MLflow server, Airflow (CeleryExecutor)
# and two Celery workers that share no disk (infra/scripts/start_cluster.sh); runs one night of the embedded demo
# corpus, prints where each task ran and where its data lives, then stops everything.
demo-cluster: setup system-deps
	bash infra/scripts/demo_cluster.sh

# Online answers (after `make demo`): the three champions on http://127.0.0.1:$${PORT:-8000} (nightshift serve; /docs,
# /v1/log-anomaly, /v1/failure-rca, /v1/metric-forecast, and /predict in the PyTorch_pro demos' shape). Callers need an API key: the first run
# makes one (scopes admin,score) in $(NIGHTSHIFT_HOME)/api-keys and prints it once with a curl line; more keys:
# nightshift serve-key NAME --scope score. MODEL=NAME serves that one model with `mlflow models serve` instead (POST
# /invocations, no keys); the script puts the venv's bin on PATH, which that needs.
serve: setup
	@keys="$${NIGHTSHIFT_SERVE_API_KEYS_FILE:-$(NIGHTSHIFT_HOME)/api-keys}"; \
	if [ -z "$(MODEL)" ] && [ ! -e "$$keys" ]; then \
	  key=$$($(NS) serve-key make-serve --scope admin,score --file "$$keys"); \
	  echo "API key (admin, score), shown only now: $$key"; \
	  echo "try: curl -H 'Authorization: Bearer $$key' -H 'Content-Type: application/json'" \
	    "-d '{\"texts\": [\"Out of memory: Killed process 4242 (python)\"]}' http://127.0.0.1:$${PORT:-8000}/v1/log-anomaly"; \
	fi
	bash infra/scripts/start_server.sh --port $${PORT:-$(if $(MODEL),5001,8000)} $(if $(MODEL),--mlflow $(MODEL))

# The MLflow UI on the store `make demo` wrote, behind MLflow's basic-auth app: log in as admin, whose password is
# drawn on the first start into $(NIGHTSHIFT_HOME)/mlflow/auth/admin-password (mode 0600), or is
# MLFLOW_AUTH_ADMIN_PASSWORD's; users and grants: docs/deployment.md. Clients send MLFLOW_TRACKING_USERNAME/PASSWORD.
ui: setup
	bash infra/scripts/start_mlflow.sh --auth basic --data $(NIGHTSHIFT_HOME)/mlflow --port $${PORT:-5000}

clean:
	rm -rf $(NIGHTSHIFT_HOME) .pytest_cache
