# nightshift: `make demo` runs the nightly retrain once on the embedded corpus; `make test` runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
NS := $(VENV)/bin/nightshift
export NIGHTSHIFT_HOME ?= $(CURDIR)/.nightshift
# pip's site config lists local indexes that lack most packages; its notes about them are noise.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup system-deps demo demo-forecast test bench ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	touch $@

# Debian packages for the real servers the tests start (Prometheus, Pushgateway).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-pushgateway >/dev/null; \
	  else echo "need root to apt-get install prometheus prometheus-pushgateway" >&2; fi; fi

demo: setup
	$(NS) demo-data --out $(NIGHTSHIFT_HOME)/demo
	$(NS) retrain
	@echo
	@echo "MLflow store: $(NIGHTSHIFT_HOME)/mlflow   UI: make ui, then open http://127.0.0.1:5000"

test: setup system-deps
	$(PY) -m pytest -q

# Forecasts on real servers: Prometheus (backfilled with the demo metrics) and a Pushgateway on free
# loopback ports, `nightshift forecast` with the champion from `make demo`, read back with PromQL.
demo-forecast: setup system-deps
	bash infra/scripts/demo_forecast.sh

bench: setup system-deps
	$(PY) benchmarks/run.py

ui: setup
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(NIGHTSHIFT_HOME)/mlflow/mlflow.db \
	  --artifacts-destination $(NIGHTSHIFT_HOME)/mlflow/artifacts --host 127.0.0.1 --port $${PORT:-5000}

clean:
	rm -rf $(NIGHTSHIFT_HOME) .pytest_cache
