"""`transfer-rec`: the operator's commands (the Makefile calls them too)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transfer_rec.config import REPO_ROOT
from transfer_rec.io.state import StateLayout
from transfer_rec.runtime.processes import stop_group, wait_watching


def _bin(name: str) -> str:
    """A console script of this environment (airflow, mlflow), next to the running interpreter."""
    return str(Path(sys.executable).parent / name)


def init(layout: StateLayout) -> None:
    """Create the state folder, migrate Airflow's and MLflow's databases, fill the embedded platforms' export folders,
    make the linking salt if a file is named for it and none is set (idempotent)."""
    from transfer_rec.schema.unified import PII_SALT_ENV, PII_SALT_FILE_ENV
    from transfer_rec.stages.unify import ensure_salt_file

    exports(layout)
    salt_file = os.environ.get(PII_SALT_FILE_ENV)
    if not os.environ.get(PII_SALT_ENV) and salt_file and ensure_salt_file(Path(salt_file)):
        print(f"linking salt written: {salt_file} (keep it: a new salt gives everyone new link ids)")
    for folder in (layout.lake, layout.models, layout.recommendations, layout.mlflow, layout.reports):
        folder.mkdir(parents=True, exist_ok=True)
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", layout.root / "airflow"))
    airflow_home.mkdir(parents=True, exist_ok=True)
    _quiet([_bin("airflow"), "db", "migrate"], "airflow db migrate")
    uri = layout.mlflow_uri()
    # Create the schema once, before parallel tasks write: concurrent creation corrupts a new SQLite DB.
    _quiet([_bin("mlflow"), "db", "upgrade", uri], "mlflow db upgrade")
    print(f"state folder: {layout.root}\nAirflow home: {airflow_home}\nMLflow: {uri}")


def exports(layout: StateLayout, refill: bool = False) -> None:
    """Fill the embedded demo platforms' export folders that do not exist yet (io/embedded.py); one filled before and
    deleted since only with `refill`."""
    from transfer_rec.config import load_config
    from transfer_rec.io.embedded import export_all

    for folder in export_all(load_config(), layout.embedded_record, refill):
        print(f"embedded platform export written: {folder}")


def suites() -> None:
    """Write the default Great Expectations suites of the config's platforms that have no reviewed suite yet."""
    from transfer_rec.config import load_config
    from transfer_rec.stages.validate import ensure_suites, gx_context

    context = gx_context()
    for platform in load_config().platforms:
        print(f"{platform.name}: {', '.join(ensure_suites(context, platform))}")


# A migration of an empty or current database takes seconds; one that waits this long waits for a lock it will not get.
MIGRATE_TIMEOUT_SECONDS = 600


def _quiet(cmd: list[str], what: str, timeout: float = MIGRATE_TIMEOUT_SECONDS) -> None:
    """Run a setup command, its output shown only when it fails; bounded, and stopped with this process (SIGTERM)."""
    from transfer_rec.runtime.signals import terminate_raises

    try:
        with terminate_raises():  # subprocess.run kills the command when this raises
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"{what} did not finish in {timeout:g} s (stopped): is another process holding its database? "
            "the pipeline was not started"
        ) from None
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {result.returncode})")


def run(layout: StateLayout, force: bool = False) -> None:
    """`make run`: init, the transfer_rec DAG once in this process's environment (`airflow dags test`), summary.
    When the data and config are those the champion was trained on, the run says so and trains nothing (`force`
    retrains anyway). Refused while another `transfer-rec run` or an Airflow scheduler works on the same state."""
    from transfer_rec.config import load_config
    from transfer_rec.runtime.signals import hangup_stops

    load_config()  # a config mistake is said before anything starts (ConfigError)
    hangup_stops()  # a closed terminal stops the run and its process group, as Ctrl-C does
    with _sole_run(layout):
        _refuse_beside_a_scheduler()
        _run(layout, force)


@contextlib.contextmanager
def _sole_run(layout: StateLayout, who: str = "transfer-rec run") -> Iterator[None]:
    """Hold the state folder's run lock: two runs in one state folder would race for its lake, models and registry
    aliases. The lock goes with the process, so a killed run leaves none behind."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".run.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid, _, holder = (lock.read().strip() or "unknown").partition(" ")
            if holder == "make airflow-ui":
                raise SystemExit(
                    f"{who}: make airflow-ui is running on {layout.root} (pid {pid}): trigger the run in its UI, or "
                    "stop it (Ctrl-C) and run again"
                ) from None
            raise SystemExit(f"{who}: a run is working on {layout.root} (pid {pid}); wait for it to finish") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()} {who}")
        lock.flush()
        yield


SCHEDULER_CHECK_SECONDS = 120


def _refuse_beside_a_scheduler() -> None:
    """An Airflow scheduler alive on this Airflow home (`make airflow-ui`) runs transfer_rec on the same state: a
    run beside it would race with its runs. `airflow jobs check` is Airflow's own liveness test (recent heartbeat);
    without a database yet there is no scheduler and the check just fails. Bounded (a locked database must not
    hang the run) and stopped by SIGTERM like the run itself."""
    from transfer_rec.runtime.signals import terminate_raises

    check = [_bin("airflow"), "jobs", "check", "--job-type", "SchedulerJob", "--allow-multiple", "--limit", "0"]
    try:
        with terminate_raises():  # subprocess.run kills the check when this raises
            found = subprocess.run(check, capture_output=True, timeout=SCHEDULER_CHECK_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"transfer-rec run: `airflow jobs check` gave no answer in {SCHEDULER_CHECK_SECONDS} s, so whether an "
            f"Airflow scheduler is running on {os.environ.get('AIRFLOW_HOME', 'default')} is unknown; nothing was run"
        ) from None
    if found:
        raise SystemExit(
            "transfer-rec run: an Airflow scheduler is running on this Airflow home "
            f"({os.environ.get('AIRFLOW_HOME', 'default')}), and would run transfer_rec on the same state: trigger "
            "the run in its UI (make airflow-ui), or stop it and run again"
        )


def _run(layout: StateLayout, force: bool) -> None:
    init(layout)
    log = layout.root / "last-run.log"
    command = [_bin("airflow"), "dags", "test", "transfer_rec"]
    if force:
        command += ["--conf", json.dumps({"force": True})]
    from transfer_rec.ops import task_log
    from transfer_rec.runtime.signals import terminate_raises

    # `airflow dags test` runs every task in its own process and, when a task is stopped, waits to retry it: so the
    # run gets a process group of its own, and Ctrl-C, SIGTERM or any error here stops that whole group
    started = time.time()
    family: dict[int, Any] = {}
    with open(log, "w") as out, terminate_raises():
        env = {**os.environ, task_log.ENV: "1"}  # the UI's log tab shows in-process tasks' logs too
        proc: subprocess.Popen | None = None
        try:  # Popen inside: a stop landing just after it returned still stops the group it started
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            code = wait_watching(proc, family)
        finally:
            if proc is not None and proc.poll() is None:
                _tell("transfer-rec run: stopping the pipeline run")
                # a second Ctrl-C or SIGTERM while stopping would leave the group running: the stop finishes first
                with _signals_held():
                    stop_group(proc, grace=(10.0, 5.0), known=family)
                    _fail_stopped_runs()
            elif proc is not None:  # ended on its own (a crash too): a task runner it left must not go on writing
                stop_group(proc, known=family)
    if code != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-60:]))
        report = layout.reports / "latest.json"
        if report.exists() and report.stat().st_mtime >= started:  # some targets finished: what they did
            summary(layout)
        raise SystemExit(f"transfer-rec run: the DAG failed, full log in {log}")
    summary(layout)


def summary(layout: StateLayout) -> None:
    """Print the last pipeline run's report."""
    from transfer_rec.stages.promote import linked_line, newcomers_line

    path = layout.reports / "latest.json"
    if not path.exists():
        raise SystemExit(f"no run report at {path}: run `make run` first")
    report = json.loads(path.read_text())
    # a run that failed before its report (a refused batch) writes none: say when this one was written
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    print(f"\ntransfer-rec run {report['run_key']} (report written {written:%Y-%m-%d %H:%M} UTC)")
    if report.get("skipped"):
        print(f"\n{report['skipped']}")
        return
    print("\nplatforms               rows pulled   validation         unified        kept")
    for name, p in report["platforms"].items():
        status = p["validation"] + (f" ({p['validation_warnings']} warn)" if p["validation_warnings"] else "")
        print(
            f"  {name:<10} {p['role']:<7} {p['rows_pulled']:>11,}   {status:<17} {p['rows_unified']:>8,} "
            f"{p['rows_kept']:>10,}"
        )
    print()
    for family in report["pretrain"]:
        print(
            f"pretrain on {', '.join(family['sources'])} (for {', '.join(family['targets'])}): "
            f"{family['epochs']} epochs, {family['seconds']} s"
        )
    for target, t in report["targets"].items():
        failed = (
            f"FAILED at {t['failed_at']} (its line in {layout.reports / 'failures.log'})" if "failed_at" in t else ""
        )
        if "k" not in t:
            print(f"\ntarget {target}: {failed}")
            continue
        k = t["k"]
        print(f"\ntarget {target}: {t['test_users']} held-out users, metrics at K={k}")
        linked = report["platforms"].get(target, {}).get("users_linked_to_a_source")
        if linked:
            print(f"  people: {linked:,} of its users also have an account on a source (same link id)")
        evaluation = Path(t["report"]) if t.get("report") else None
        evaluated = json.loads(evaluation.read_text()) if evaluation and evaluation.exists() else {}
        weights = evaluated.get("source_weights")
        if weights:
            shown = ", ".join(
                f"{name} {'used' if w > 0 else 'left out (no help on valid)'}" for name, w in weights.items()
            )
            print(f"  sources in the item-item prior: {shown}")
        if evaluated.get("linked"):
            print(f"  {linked_line(evaluated['linked'])}")
        newcomers = newcomers_line(evaluated.get("segments", []), k)
        if newcomers:
            print(f"  {newcomers}")
        columns = (
            ("NDCG", "ndcg"),
            ("Recall", "recall"),
            ("Hit", "hit"),
            ("MRR", "mrr"),
            ("Prec", "precision"),
            ("Cover", "coverage"),
            ("Divers", "diversity"),
            ("Novel", "novelty"),
            ("Retain", "retention"),
            ("RetNew", "retention_new"),
        )
        print(f"  {'model':<13}" + "".join(f"{title:>8}" for title, _ in columns))
        for name, m in t["metrics"].items():
            print(
                f"  {name:<13}"
                + "".join(f"{m[x]:>8.4f}" if m.get(x) is not None else f"{'n/a':>8}" for _, x in columns)
            )
        print("  (retention: share of users with a hit in their top-K on their next period; docs/evaluation.md)")
        d = t["decision"]
        if d is None:
            print(f"  decision: {failed}")
            continue
        print(f"  decision: {d['model']} v{d['version']} {'PROMOTED to champion' if d['promoted'] else 'not promoted'}")
        for reason in d["reasons"]:
            print(f"    - {reason}")
        pub = t["published"] or {}
        if failed:
            print(f"  published: {failed}")
        elif pub.get("published"):
            short = (
                f", {pub['short_history_users']:,} below the training threshold"
                if pub.get("short_history_users")
                else ""
            )
            # by the champion's version: after "not promoted" they are the earlier champion's, not the candidate's
            by = f" by champion v{pub['model_version']}" if pub.get("model_version") else ""
            print(
                f"  published: {pub['rows']:,} recommendations{by} for {pub['users']:,} users{short} -> {pub['path']}"
            )
        else:
            print(f"  published: nothing ({pub.get('reason', 'n/a')})")
    print(
        "\nnext: `make airflow-ui` (Airflow on http://127.0.0.1:8080), `make mlflow-ui` (http://127.0.0.1:5000), "
        "`make serve` (the champion over HTTP)"
    )


STOPPED_RUNS_SCRIPT = REPO_ROOT / "tools" / "airflow_stopped_runs.py"


def _fail_stopped_runs() -> None:
    """Mark transfer_rec's runs that a stopped `airflow dags test` left running as failed (tools/
    airflow_stopped_runs.py: it imports Airflow); the scheduler would otherwise continue them or wait behind them.
    Bounded; a failure is reported, never raised (the run is stopping anyway)."""
    if not STOPPED_RUNS_SCRIPT.exists():
        print(
            f"transfer-rec: {STOPPED_RUNS_SCRIPT} is missing; a stopped run may stay 'running' in Airflow",
            file=sys.stderr,
        )
        return
    try:
        done = subprocess.run(
            [sys.executable, str(STOPPED_RUNS_SCRIPT), "transfer_rec"], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        print(
            "transfer-rec: marking the stopped run failed in Airflow's database took over 120 s; skipped",
            file=sys.stderr,
        )
        return
    if done.returncode != 0:
        print(
            f"transfer-rec: could not mark the stopped run failed in Airflow's database: {done.stderr[-500:]}",
            file=sys.stderr,
        )
    elif done.stdout.strip():
        print(done.stdout.strip(), file=sys.stderr)


def _tell(message: str) -> None:
    """A line for the operator on stderr, if it can still be written: after a hangup the terminal is gone and a
    write fails (EIO), which must not keep what follows (stopping the run) from happening."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while inside (in the main thread), their handlers back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


UI_START_SECONDS = 120


def airflow_ui(layout: StateLayout) -> None:
    """`airflow standalone` on 127.0.0.1 until Ctrl-C; stops its whole process tree (no orphans)."""
    from transfer_rec.runtime.signals import hangup_stops

    hangup_stops()  # a closed terminal stops Airflow too, as Ctrl-C does
    home = Path(os.environ["AIRFLOW_HOME"])
    # the whole time under the run lock: its scheduler runs transfer_rec on this state, and a `make run` beside it
    # would race with those runs (the scheduler's own liveness check finds it only after its first heartbeat)
    with _sole_run(layout, "make airflow-ui"):
        init(layout)
        # runs a stopped `make run` left "running" would be continued by this scheduler, or hold every later run
        _fail_stopped_runs()
        _standalone(layout, home)


def _standalone(layout: StateLayout, home: Path) -> None:
    """`airflow standalone` until it ends or is stopped, then its whole process tree."""
    # Ctrl-C, or a SIGTERM from a supervisor, stops everything (background shells start us with SIGINT ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        ["airflow", "standalone"],
        env=env,
        start_new_session=True,
        stdout=open(layout.root / "airflow-standalone.log", "w"),
        stderr=subprocess.STDOUT,
    )
    password_file = home / "simple_auth_manager_passwords.json.generated"
    print("starting Airflow (log: var/airflow-standalone.log) ...")
    family: dict[int, Any] = {}  # its processes, noted while it lives: Airflow may end first and leave them running
    try:
        for _ in range(UI_START_SECONDS):
            if password_file.exists() and _port_open(8080):
                break
            if proc.poll() is not None:
                raise SystemExit(f"airflow standalone exited with {proc.returncode}: see var/airflow-standalone.log")
            time.sleep(1)
        else:
            print(
                f"Airflow is not answering on 127.0.0.1:8080 after {UI_START_SECONDS} s: it may still be starting "
                "(see var/airflow-standalone.log); press Ctrl-C to stop"
            )
            wait_watching(proc, family)
            return
        logins = json.loads(password_file.read_text()) if password_file.exists() else {}
        print("Airflow UI: http://127.0.0.1:8080  " + ", ".join(f"login {u} / {p}" for u, p in logins.items()))
        print("the DAG transfer_rec is unpaused; press Ctrl-C to stop")
        wait_watching(proc, family)
    except KeyboardInterrupt:
        pass
    finally:
        with _signals_held():
            stop_group(proc, known=family)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


BENCHMARK = """The side-by-side benchmark: a source and a target split given as files, run through the stage code the
DAG runs (no Airflow). Writes DIR/recommendations.tsv (user_id, item_id, rank: the top 10 of every test user, train
and valid items excluded) and DIR/metrics.json. Interaction files are TSV with a header (user_id, item_id, rating,
timestamp); users and items files are read as the config's source and first target export them."""
BENCHMARK_FILES = (
    "source",
    "target-train",
    "target-valid",
    "target-test",
    "source-users",
    "source-items",
    "target-users",
    "target-items",
)


@contextlib.contextmanager
def _registry_errors(what: str) -> Iterator[None]:
    """An MLflow registry refusal (no such model, version or alias) as one line saying what could not be done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise SystemExit(f"{what} ({exc.message.splitlines()[0] if exc.message else type(exc).__name__})") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="transfer-rec", description="transfer-rec: the operator's commands.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("init", help="create the state folder, migrate the databases, fill the embedded platforms' exports")
    run_parser = sub.add_parser(
        "run", help="init, run the transfer_rec DAG once in this process, print the summary (make run)"
    )
    run_parser.add_argument("--force", action="store_true", help="retrain even when data and config are the champion's")
    sub.add_parser("summary", help="print the last run's report")
    exports_parser = sub.add_parser(
        "exports", help="fill the embedded demo platforms' export folders (no databases touched)"
    )
    exports_parser.add_argument(
        "--refill", action="store_true", help="also fill folders that were filled once and deleted since"
    )
    sub.add_parser("suites", help="write the default GX suites of platforms that have no reviewed suite yet")
    sub.add_parser("airflow-ui", help="run Airflow standalone on 127.0.0.1:8080 until Ctrl-C")
    serve_parser = sub.add_parser(
        "serve", help="serve a registered model over HTTP (MLflow's scoring server with a request body limit)"
    )
    serve_parser.add_argument("--model", default="models:/transfer_rec-ml-100k@champion", help="model URI")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=5001)
    serve_parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    serve_parser.add_argument(
        "--max-body-bytes", type=int, default=None, help="larger request bodies get HTTP 413 (default 1 MiB)"
    )
    serve_parser.add_argument(
        "--follow-seconds",
        type=float,
        default=None,
        help="how often a model named by alias (@champion) is checked for a new version to load (0: never; default 60)",
    )
    rollback = sub.add_parser("rollback", help="move a target's champion alias back to previous_champion")
    rollback.add_argument("target")
    rollback.add_argument(
        "--force",
        action="store_true",
        help="roll back without loading the previous champion to check it for people who have since withheld consent",
    )
    bench = sub.add_parser(
        "benchmark", help="the side-by-side benchmark on a split given as files", description=BENCHMARK
    )
    for name in BENCHMARK_FILES:
        bench.add_argument(f"--{name}", metavar="FILE")
    bench.add_argument(
        "--platforms", metavar="FILE", help="a platform registry (several linked platforms): see docs/evaluation.md"
    )
    bench.add_argument("--out", required=True, metavar="DIR")
    bench.add_argument("--config", help="pipeline config (default: config/pipeline.yaml)")
    args = parser.parse_args(argv)
    layout = StateLayout.from_env()
    if args.command in ("init", "run", "airflow-ui") and not os.environ.get("AIRFLOW_HOME"):
        # Airflow would take ~/airflow and no DAGs folder: the Makefile sets both (and the rest Airflow needs)
        raise SystemExit(
            f"`transfer-rec {args.command}` needs the Airflow environment `make` sets (AIRFLOW_HOME, the DAGs "
            f"folder): run `make {'airflow-ui' if args.command == 'airflow-ui' else 'run'}`, or export what the "
            "Makefile exports"
        )
    from transfer_rec.config import ConfigError

    try:
        _dispatch(args, bench, layout)
    except ConfigError as error:  # a config mistake is the operator's to fix: what and where, not a traceback
        raise SystemExit(str(error)) from None


def _dispatch(args: argparse.Namespace, bench: argparse.ArgumentParser, layout: StateLayout) -> None:
    if args.command == "init":
        init(layout)
    elif args.command == "run":
        run(layout, force=args.force)
    elif args.command == "summary":
        summary(layout)
    elif args.command == "exports":
        exports(layout, args.refill)
    elif args.command == "suites":
        suites()
    elif args.command == "airflow-ui":
        airflow_ui(layout)
    elif args.command == "serve":
        from transfer_rec.serving import http

        os.environ.setdefault("MLFLOW_TRACKING_URI", layout.mlflow_uri())
        if args.max_body_bytes is not None and args.max_body_bytes < 1:
            raise SystemExit(f"--max-body-bytes {args.max_body_bytes}: give a positive number of bytes")
        follow = http.DEFAULT_FOLLOW_SECONDS if args.follow_seconds is None else args.follow_seconds
        if not 0 <= follow <= http.MAX_FOLLOW_SECONDS:
            raise SystemExit(f"--follow-seconds {follow}: give 0 (never) or up to {http.MAX_FOLLOW_SECONDS:,} seconds")
        try:
            max_body = args.max_body_bytes or http.max_body_bytes()
        except ValueError as error:  # the environment's limit: what to fix, not a traceback
            raise SystemExit(str(error)) from None
        with _registry_errors(f"no model to serve at {args.model}"):
            http.serve(args.model, args.host, args.port, args.workers, max_body, follow)
    elif args.command == "rollback":
        from transfer_rec.config import load_config
        from transfer_rec.registry.models import RollbackRefused
        from transfer_rec.stages.promote import rollback as do_rollback

        targets = [t.name for t in load_config().targets]
        # a target taken out of the config keeps its registered model, which may still need its rollback
        if args.target not in targets and not _registered(args.target, layout):
            raise SystemExit(
                f"cannot roll back {args.target}: not a target platform of the config (targets: {targets}), "
                "nor a registered model"
            )

        with _registry_errors(f"cannot roll back {args.target}: it needs a champion and a previous_champion"):
            try:
                print(json.dumps(do_rollback(args.target, layout, force=args.force), indent=2))
            except RollbackRefused as exc:
                raise SystemExit(f"cannot roll back {args.target}: {exc}") from exc
    elif args.command == "benchmark":
        from transfer_rec import benchmark

        benchmark.run(args, bench)


def _registered(target: str, layout: StateLayout) -> bool:
    """Whether the registry holds the target's model (read only: a registry database that does not exist is not
    created). A registry that cannot answer raises (its own error), rather than calling the model absent."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from transfer_rec.registry.models import registered_model_name

    uri = layout.mlflow_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return False
    try:  # a client of its own: the process's tracking URI stays as it was
        mlflow.MlflowClient(tracking_uri=uri).get_registered_model(registered_model_name(target))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


if __name__ == "__main__":
    main()
