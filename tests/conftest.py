"""Shared fixtures. Environment for Airflow, GX and MLflow is pointed at temporary folders before anything imports
them, so tests never touch the developer's var/ or the committed GX suites."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# `make test` runs the suite on pytest-xdist workers. Each worker and every process a test starts (make run, MLflow,
# Spark's JVM) is confined to its own share of the CPUs: torch and numpy's blocks size their threads by the CPUs
# available, and two workers each running two threads on two cores spent a third more CPU time than the suite needs
# (docs/testing.md).
_WORKER, _WORKERS = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKER and _WORKERS > 1 and hasattr(os, "sched_setaffinity"):
    _cpus, _index = sorted(os.sched_getaffinity(0)), int(_WORKER.removeprefix("gw"))
    # fewer workers than CPUs: each its own slice of them; more: each one CPU, shared round-robin
    os.sched_setaffinity(0, set(_cpus[_index::_WORKERS] if len(_cpus) > _WORKERS else [_cpus[_index % len(_cpus)]]))
_SESSION = Path(tempfile.mkdtemp(prefix="transfer-rec-tests-"))
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
_GX = _SESSION / "great_expectations"
shutil.copytree(REPO / "great_expectations", _GX, ignore=shutil.ignore_patterns("uncommitted"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "GX_ANALYTICS_ENABLED": "False",
        "TRANSFER_REC_GX_DIR": str(_GX),
        "TRANSFER_REC_STATE_DIR": str(_SESSION / "var"),
        # never the developer's var/secrets/pii-salt (the Makefile names it): a test that links people sets its salt
        "TRANSFER_REC_PII_SALT_FILE": str(_SESSION / "var" / "secrets" / "pii-salt"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION / 'mlflow.db'}",
    }
)

from bench.synthetic import SyntheticPlatform, generate, write_config  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "servers: starts a real Airflow (minutes each); `make test-servers`")
    config.addinivalue_line("markers", "soak: repeated whole runs under CPU load (~50 min); `make test-servers`")
    config.addinivalue_line("markers", "prod: the production path (Celery, PostgreSQL, Redis, S3); `make test-prod`")
    config.addinivalue_line(
        "markers",
        "browser: drives a web UI in headless Chromium (Debian's /usr/bin/chromium); the Airflow and MLflow UIs' "
        "test is also marked servers",
    )


FAST_TRAINING = {
    "epochs_pretrain": 3,
    "epochs_finetune": 4,
    "patience": 2,
    "hidden": 32,
    "batch_size": 128,
    "learning_rate": 0.005,
    "seed": 7,
}


def two_platforms(faults: list[str] | None = None) -> list[SyntheticPlatform]:
    return [
        SyntheticPlatform("campus", "source", users=300, interactions_per_user=30),
        SyntheticPlatform(
            "village",
            "target",
            users=80,
            interactions_per_user=15,
            catalogue_share=0.7,
            columns=("learner", "course", "score", "ts"),
            delimiter=",",
            faults=faults or [],
        ),
    ]


@pytest.fixture(autouse=True)
def _mlflow_uris_end_with_the_test():
    """MLflow keeps the tracking and registry URIs a test set (tracking.configure) in module globals, ahead of the
    environment that monkeypatch restores: a later test's client would read this test's deleted database."""
    yield
    import sys

    for module, name in (
        ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
        ("mlflow.tracking._model_registry.utils", "_registry_uri"),
        ("mlflow.tracking.fluent", "_active_experiment_id"),
    ):
        if module in sys.modules:
            setattr(sys.modules[module], name, None)


@pytest.fixture
def pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A synthetic two-platform world with its config, state folder and MLflow DB, all under tmp_path."""

    def make(faults: list[str] | None = None, extra: list[SyntheticPlatform] | None = None, **sections) -> dict:
        return make_world(tmp_path, monkeypatch, faults, extra, **sections)

    return make


@pytest.fixture(scope="session")
def world_maker():
    """make_world, for fixtures wider than one test (a module's trained world)."""
    return make_world


def make_world(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: list[str] | None = None,
    extra: list[SyntheticPlatform] | None = None,
    **sections,
) -> dict:
    """pipeline_env's world under `root` (its two platforms and any `extra` ones), its settings in the environment
    through `monkeypatch` (any scope)."""
    generated = generate(root / "exports", [*two_platforms(faults), *(extra or [])], n_items=120, seed=3)
    return use_world(root, monkeypatch, generated, **sections)


def migrated_mlflow_db(path: Path) -> str:
    """The URI of a tracking and registry DB at `path` (kept if it exists), copied from one this process made once:
    MLflow takes a new SQLite DB through every schema migration, seconds a test on a slow core."""
    if not path.exists():
        shutil.copyfile(_mlflow_template(), path)
    return f"sqlite:///{path}"


@functools.cache
def _mlflow_template() -> Path:
    from mlflow import MlflowClient

    db = _SESSION / f"mlflow-template-{os.getpid()}.db"
    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.search_experiments()
    client.search_registered_models()
    assert not db.with_name(db.name + "-wal").exists(), "MLflow left a write-ahead log: copying the DB would lose it"
    return db


def use_world(root: Path, monkeypatch: pytest.MonkeyPatch, generated: dict, **sections) -> dict:
    """Point the pipeline at generated platforms under `root`: config (fast training unless `training` says
    otherwise), GX suites, state folder and MLflow DB, through `monkeypatch`."""
    config = write_config(
        root / "pipeline.yaml",
        generated,
        training={**FAST_TRAINING, **sections.pop("training", {})},
        **sections,
    )
    monkeypatch.setenv("TRANSFER_REC_CONFIG", str(config))
    # default suites written for this world's platforms stay with it, not in the session's GX copy
    gx_dir = root / "great_expectations"
    if not gx_dir.exists():
        shutil.copytree(_GX, gx_dir)
    monkeypatch.setenv("TRANSFER_REC_GX_DIR", str(gx_dir))
    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(root / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow_db(root / "mlflow.db"))
    return {"config": config, "state": root / "var", "exports": root / "exports"}
