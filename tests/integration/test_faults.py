"""Fault injection: each fault is caused for real (a dead or silent S3 endpoint, a killed writer, a full disk) and the
end state is checked on the files, never on logs alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_s3_pull import s3_config, upload_platform

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import LocationError, StorageFullError
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import validate_batch

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Silent:
    """A TCP server that accepts connections and never answers: an S3 endpoint that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("outage", ["down", "hangs"])
def test_s3_outage_during_pull_then_recovery_lands_every_row_once(pipeline_env, s3_env, s3_server, monkeypatch, outage):
    env = pipeline_env()
    upload_platform(s3_env, env["exports"] / "village", "raw", f"outage-{outage}/village")
    s3_config(env, f"s3://raw/outage-{outage}/village")
    platform, layout = load_config().platform("village"), StateLayout.from_env()
    silent = _Silent() if outage == "hangs" else None
    port = silent.port if silent else _closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TRANSFER_REC_S3_TIMEOUT", "1")
    started = time.monotonic()
    with pytest.raises(LocationError, match=r"s3://raw/outage-.*/village/interactions.txt: cannot reach S3"):
        pull_platform(platform, layout, "retry-me")
    assert time.monotonic() - started < 60, "a hanging server is given up on, not waited for forever"
    if silent:
        silent.close()
    assert not (layout.landing / "village" / "retry-me").exists(), "nothing half-landed is visible"
    # the server is back: the task's retry lands the batch completely, once
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    manifest = pull_platform(platform, layout, "retry-me")
    landed = layout.landing / "village" / "retry-me"
    for name in ("interactions.txt", "users.txt", "items.txt"):
        assert (landed / name).read_bytes() == (env["exports"] / "village" / name).read_bytes()
    assert sorted(p.name for p in (layout.landing / "village").iterdir()) == ["retry-me"], "no leftovers"
    rows = len(pd.read_csv(env["exports"] / "village" / "interactions.txt"))
    assert next(f.rows for f in manifest.files if f.table == "interactions") == rows


def test_pull_and_publish_tasks_retry_with_backoff_validation_does_not():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("transfer_rec")
    for task_id in ("pull", "check_inputs", "publish", "promote"):  # check_inputs reads the registry
        task = dag.get_task(task_id)
        assert task.retries >= 2 and task.retry_exponential_backoff, task_id
    for task_id in ("validate", "unify", "build_features"):
        assert dag.get_task(task_id).retries == 0, f"{task_id} is deterministic: a retry cannot help"
    # a training stage past its time limit is not run again for the whole limit (twice, while later runs wait)
    from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

    for task_id in ("pretrain", "finetune", "evaluate"):
        assert dag.get_task(task_id).python_callable.timeout_is_final, task_id
    for task_id in ("pull", "publish", "promote"):
        assert not dag.get_task(task_id).python_callable.timeout_is_final, f"{task_id}: slow I/O may pass next time"
    fail_fast = dag.get_task("pretrain").python_callable.__globals__["fail_fast"]

    def slow():
        raise AirflowTaskTimeout()

    with pytest.raises(AirflowFailException, match="slow ran past its time limit: not retried"):
        fail_fast(slow, timeout_is_final=True)()
    with pytest.raises(AirflowTaskTimeout):
        fail_fast(slow)()


def test_every_task_has_its_configured_time_limit_and_bad_params_fail_once(pipeline_env, monkeypatch):
    from datetime import timedelta

    import yaml
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.utils import db

    env = pipeline_env()
    db.initdb()
    raw = yaml.safe_load(env["config"].read_text())
    raw["runtime"] = {"stage_timeout_minutes": {"pretrain": 7, "unify": 3}}
    env["config"].write_text(yaml.safe_dump(raw))
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("transfer_rec")
    assert dag.get_task("pretrain").execution_timeout == timedelta(minutes=7)
    assert dag.get_task("unify").execution_timeout == timedelta(minutes=3)
    assert dag.get_task("finetune").execution_timeout == timedelta(minutes=120), "unlisted: its default limit"
    assert all(t.execution_timeout is not None for t in dag.tasks)
    # an unknown target is a deterministic error: the plan task fails without retries (AirflowFailException)
    plan = dag.get_task("plan").python_callable
    with pytest.raises(AirflowFailException, match="no-such-platform"):
        plan(params={"targets": ["no-such-platform"]}, run_id="bad", dag=dag)


CHILD_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from transfer_rec.io.storage import atomic_dir
    final = Path(sys.argv[1])
    with atomic_dir(final) as out:
        (out / "manifest.json").write_text('{"run": "killed"}')
        with open(out / "interactions.parquet", "wb") as fh:
            fh.write(b"PAR1 half a file")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
""")


@pytest.mark.parametrize("folder", ["lake/unified/current", "recommendations/village"])
def test_a_writer_killed_mid_write_leaves_the_previous_version_visible(pipeline_env, folder):
    pipeline_env()
    layout = StateLayout.from_env()
    final = layout.root / folder
    from transfer_rec.io.storage import atomic_dir

    with atomic_dir(final) as out:
        (out / "manifest.json").write_text('{"run": "complete"}')
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(final)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert json.loads((final / "manifest.json").read_text()) == {"run": "complete"}
    assert not (final / "interactions.parquet").exists()
    # the next successful write switches over and prunes the orphaned half-written version
    with atomic_dir(final) as out:
        (out / "manifest.json").write_text('{"run": "next"}')
    assert json.loads((final / "manifest.json").read_text()) == {"run": "next"}
    leftovers = [p for p in (final.parent / ".versions").iterdir() if p.name.startswith(final.name)]
    assert len(leftovers) == 2, "the current and the previous complete versions remain, nothing else"


CHILD_UNIFY = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, like a full disk
    from transfer_rec.config import load_config
    from transfer_rec.io.state import StateLayout
    from transfer_rec.stages.pull import pull_platform
    from transfer_rec.stages.validate import validate_batch
    from transfer_rec.stages.unify import unify
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "full"), p, layout) for p in config.platforms]
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    unify(validated, config, layout)
""")


def test_a_full_disk_while_unifying_fails_clearly_and_corrupts_nothing(pipeline_env):
    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "before"), p, layout) for p in config.platforms]
    before = unify(validated, config, layout)
    rows = len(pd.read_parquet(layout.unified / "current" / "interactions.parquet"))
    child = subprocess.run([sys.executable, "-c", CHILD_UNIFY, str(20_000)], capture_output=True, text=True)
    assert child.returncode != 0
    assert "StorageFullError" in child.stderr and "out of space while writing a new version" in child.stderr
    assert "the previous version stays current" in child.stderr
    now = json.loads((layout.unified / "current" / "manifest.json").read_text())
    assert now["dir"] == before.dir
    assert len(pd.read_parquet(layout.unified / "current" / "interactions.parquet")) == rows
    assert len([p for p in (layout.unified / ".versions").iterdir()]) == 1, "the partial version was removed"


def test_a_full_disk_while_pulling_names_the_file_and_lands_nothing(pipeline_env, tmp_path):
    pipeline_env()
    script = textwrap.dedent("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from transfer_rec.config import load_config
        from transfer_rec.stages.pull import pull_platform
        from transfer_rec.io.state import StateLayout
        pull_platform(load_config().platform("campus"), StateLayout.from_env(), "tiny")
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode != 0 and "StorageFullError" in child.stderr
    assert "interactions.txt: out of space while pulling" in child.stderr
    landing = StateLayout.from_env().landing / "campus"
    assert not (landing / "tiny").exists()
    assert not [p for p in landing.rglob("*.part")], "no partial copy left behind"
    assert StorageFullError.__mro__[1] is OSError


def _mlflow_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    import urllib.request

    log = open(db.with_suffix(f".{port}.log"), "a")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {db.with_suffix(f'.{port}.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    pytest.fail("mlflow server did not start within 90 s")


def test_registry_outage_at_promotion_then_retries_register_once(pipeline_env, tmp_path, monkeypatch):
    """The MLflow server dies before promotion: the task fails naming the server; after it is back, the retry and
    a second run for the same interval neither add versions nor move aliases twice, and publish the same lists."""
    import mlflow
    from tests.integration.inline import run_inline

    from transfer_rec.runtime.processes import stop_group
    from transfer_rec.stages import pipeline

    pipeline_env()
    db = tmp_path / "mlflow.db"  # the pipeline_env's tracking DB; the server below serves the same one
    run = pipeline.plan({"run_key": "outage"}, airflow_run_id="outage")
    validated = [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]]
    features = pipeline.build_features(run, pipeline.unify(run, validated))
    candidate = pipeline.finetune(run, "village", features, pipeline.pretrain(run, features))
    evaluation = pipeline.evaluate(run, candidate, features)

    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    with pytest.raises(Exception, match=f"127.0.0.1:{port}"):  # the registry is down at promotion
        pipeline.promote(run, evaluation)
    server = _mlflow_server(db, tmp_path / "served-artifacts", port)
    try:
        client = mlflow.MlflowClient()

        def refused(*args, **kwargs):
            raise mlflow.exceptions.MlflowException("the registry refused the alias write")

        # back, but refusing alias writes: the version passed the gate and is not champion, and says so
        with monkeypatch.context() as refusing:
            refusing.setattr(mlflow.MlflowClient, "set_registered_model_alias", refused)
            with pytest.raises(mlflow.exceptions.MlflowException, match="refused the alias"):
                pipeline.promote(run, evaluation)
        (stranded,) = client.search_model_versions("name = 'transfer_rec-village'")
        assert stranded.tags["gate.decision"] == "crowning" and not stranded.aliases, stranded
        assert "**Gate: passed**" in stranded.description and "promoted**" not in stranded.description
        first = pipeline.promote(run, evaluation)  # the task's retry, once the server is back
        assert client.get_model_version("transfer_rec-village", first["version"]).tags["gate.decision"] == "promoted"
        again = pipeline.promote(run, evaluation)  # a retry after a success
        # a retry after the crowning whose last write fails: the champion still reads "promoted"
        from transfer_rec.registry import models as registry_models

        tag = registry_models.tag

        def last_write_refused(target, version, tags):
            if tags == {"gate.decision": "promoted"}:
                refused()
            tag(target, version, tags)

        with monkeypatch.context() as failing:
            failing.setattr(registry_models, "tag", last_write_refused)
            with pytest.raises(mlflow.exceptions.MlflowException):
                pipeline.promote(run, evaluation)
        assert client.get_model_version("transfer_rec-village", first["version"]).tags["gate.decision"] == "promoted"
        versions = client.search_model_versions("name = 'transfer_rec-village'")
        assert [v.version for v in versions] == [first["version"]] == [again["version"]]
        assert client.get_model_version_by_alias("transfer_rec-village", "champion").version == first["version"]
    finally:
        stop_group(server)
    # down again: a registry that does not answer is no "no champion" (publish would skip as if nothing had been
    # promoted, a crowning would lose previous_champion)
    from transfer_rec.registry.models import alias_version

    with pytest.raises(Exception, match=f"127.0.0.1:{port}"):
        alias_version("village")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    published = pipeline.publish(run, first, features)
    # read now: the rerun publishes to the same path
    lists = pd.read_parquet(Path(published["path"]))
    rerun = run_inline("outage")  # a second run for the same interval
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name = 'transfer_rec-village'")) == 1
    assert str(rerun["decision"]["version"]) == str(first["version"])
    assert len(lists) > 0
    pd.testing.assert_frame_equal(lists, pd.read_parquet(Path(rerun["published"]["path"])))
    unified = pd.read_parquet(StateLayout.from_env().unified / "current" / "interactions.parquet")
    assert not unified.duplicated(["user_id", "item_id"]).any()
    assert len(unified) == sum(
        v["validation"]["tables"][f]["rows"]
        for v in validated
        for f in v["validation"]["tables"]
        if v["validation"]["tables"][f]["table"] == "interactions"
    )
