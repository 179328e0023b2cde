"""Work in forked processes: the result comes back, an exception is raised in the parent, a child can be stopped."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from transfer_rec.runtime.workers import Forked, WorkerTimeout, forked_map


def _pid_and(value):
    return os.getpid(), value


def _fail(message):
    raise ValueError(message)


def _sleep(seconds):
    time.sleep(seconds)


def test_a_forked_call_returns_its_result_or_raises_its_error():
    pid, value = Forked(_pid_and, {"rows": [1, 2]}).result()
    assert value == {"rows": [1, 2]} and pid != os.getpid()
    with pytest.raises(ValueError, match="bad batch"):
        Forked(_fail, "bad batch").result()


class _NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def _refuse(platform):
    from transfer_rec.schema.rules import BatchRefused

    raise BatchRefused(platform, "items.csv", "item_id", "missing_items", "3 interaction(s) name 1 item(s)")


def _fail_oddly():
    raise _NeedsTwo("this", "that")


def test_a_childs_refusal_reaches_the_parent_as_itself_and_an_unrebuildable_error_as_its_text():
    from transfer_rec.schema.rules import BatchRefused

    with pytest.raises(BatchRefused) as refused:
        Forked(_refuse, "shop").result()
    assert (refused.value.platform, refused.value.file, refused.value.column, refused.value.rule) == (
        "shop",
        "items.csv",
        "item_id",
        "missing_items",
    )
    assert (
        str(refused.value)
        == "platform shop, items.csv, column 'item_id': rule missing_items: 3 interaction(s) name 1 item(s)"
    )
    with pytest.raises(RuntimeError, match=r"_fail_oddly in a forked process: _NeedsTwo\('this and that'\)"):
        Forked(_fail_oddly).result()


def test_a_cancelled_call_stops_its_process():
    # a SIGTERM handler that ignores the signal, as a task runner's may be, is inherited by the child
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        call = Forked(_sleep, 600)
    finally:
        signal.signal(signal.SIGTERM, previous)
    process = call._process
    call.cancel()  # joins the child: without the kill this would wait for the sleep
    assert not process.is_alive() and process.exitcode == -9, "killed, not left to finish"
    with pytest.raises(RuntimeError, match="cancelled"):
        call.result()


def test_a_child_takes_the_default_sigterm_action_whatever_its_parent_installed():
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as Airflow's task runner does
    try:
        call = Forked(_sleep, 600)
    finally:
        signal.signal(signal.SIGTERM, previous)
    process = call._process
    time.sleep(0.5)  # let the child reset its handlers
    os.kill(process.pid, signal.SIGTERM)
    process.join(10)
    assert process.exitcode == -signal.SIGTERM
    with pytest.raises(RuntimeError, match="without a result"):
        call.result()


def test_a_call_past_its_deadline_is_killed_and_named():
    call = Forked(_sleep, 600)
    process = call._process
    with pytest.raises(WorkerTimeout, match="_sleep.*deadline of 1 s"):
        call.result(timeout=1)
    assert not process.is_alive()


def _job(index):
    if index == 2:
        raise ValueError("job 2 is bad")
    if index == 3:
        time.sleep(600)
    return index * 10


def test_forked_map_returns_every_result_in_at_most_count_children():
    assert forked_map(lambda i: (i, os.getpid()), range(4), count=2).keys() == {0, 1, 2, 3}
    pids = {pid for _, pid in forked_map(lambda i: (i, os.getpid()), range(4), count=2).values()}
    assert os.getpid() not in pids and len(pids) == 4

    def spans(_: int) -> tuple[float, float]:
        started = time.monotonic()
        time.sleep(0.5)
        return started, time.monotonic()

    # at most two at once: at no job's start are two others still running
    times = list(forked_map(spans, range(5), count=2).values())
    assert max(sum(s <= start < e for s, e in times) for start, _ in times) <= 2


def test_forked_map_raises_the_first_error_and_leaves_no_child_behind():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match="job 2 is bad"):
        forked_map(_job, [3, 2, 0], count=2)  # 3 sleeps for ten minutes: it must be killed, not waited for
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_forked_map_kills_a_child_past_its_deadline():
    with pytest.raises(WorkerTimeout, match="_job\\(3\\)"):
        forked_map(_job, [0, 3], count=2, timeout=1)


HUNG_STAGE = """
import logging, signal, sys, time
logging.basicConfig(level=logging.INFO)
from transfer_rec.runtime.signals import stage_guard
from transfer_rec.runtime.workers import forked_map

def block(index):
    time.sleep(600)

# Airflow's task runner: SIGTERM only calls on_kill() and returns
signal.signal(signal.SIGTERM, lambda *_: print("on_kill", flush=True))
with stage_guard("unify", every=0.2):
    print("ready", flush=True)
    forked_map(block, range(2), count=2)
"""


def test_sigterm_stops_a_stage_waiting_on_its_workers_and_kills_them(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(HUNG_STAGE)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        time.sleep(1.0)  # a few heartbeats
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "on_kill" in out, "the previous handler still runs"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "still running after" in err, "the heartbeat logs"
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_a_stage_forks_at_most_the_configs_workers_unless_the_environment_says_otherwise(pipeline_env, monkeypatch):
    import yaml

    from bench.synthetic import write_config
    from transfer_rec.runtime.workers import workers
    from transfer_rec.stages import pipeline

    env = pipeline_env()
    raw = yaml.safe_load(env["config"].read_text())
    raw.setdefault("runtime", {})["workers"] = 7
    write_config(env["config"], raw)
    monkeypatch.delenv("TRANSFER_REC_WORKERS", raising=False)
    stage = pipeline._guarded(workers)
    assert stage() == 7 and workers() == len(os.sched_getaffinity(0)), "the config's count, inside the stage only"
    monkeypatch.setenv("TRANSFER_REC_WORKERS", "3")
    assert stage() == 3


def test_every_stage_a_dag_task_runs_for_minutes_is_guarded():
    """The stages the DAGs' long tasks call run inside the stage guard (SIGTERM and the time limit stop them, a
    heartbeat, the config's workers); the ingest DAGs' two stages were once left out."""
    from transfer_rec.stages import pipeline

    guarded = pipeline._guarded(lambda: None).__code__
    stages = ("pull", "validate", "unify", "check_inputs", "build_features", "pretrain", "finetune", "evaluate")
    for name in (*stages, "promote", "publish", "ingest_pull", "ingest_validate"):
        assert getattr(pipeline, name).__code__ is guarded, f"{name} runs outside the stage guard"


HUNG_CLI = """
import signal, subprocess, sys
from transfer_rec.runtime.signals import hangup_stops, terminate_raises

if "--nohup" not in sys.argv:  # as started from a terminal, even when the tests themselves run under nohup
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
hangup_stops()
with terminate_raises():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:  # the pid told inside: a stop that lands while print returns must still reach the finally
        print(child.pid, flush=True)
        child.wait()
    finally:
        child.kill()
"""


def test_a_hangup_stops_a_command_as_sigterm_does_and_its_session_child_with_it(tmp_path):
    """A closed terminal: by default SIGHUP ends the process with no `finally`, and a child in a session of its own
    (which the hangup does not reach) would run on with no parent."""
    proc = subprocess.Popen([sys.executable, "-c", HUNG_CLI], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(proc.stdout.readline()))
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert alive == []
    finally:
        proc.kill()


def test_a_command_started_under_nohup_outlives_the_hangup_it_asked_to():
    ignoring = subprocess.Popen(
        [sys.executable, "-c", "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n" + HUNG_CLI, "--nohup"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child = psutil.Process(int(ignoring.stdout.readline()))
        ignoring.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            ignoring.wait(timeout=2)
    finally:
        ignoring.kill()
        ignoring.wait()
        child.kill()


def test_what_the_run_tells_the_operator_cannot_keep_it_from_stopping(monkeypatch):
    """After a hangup the terminal is gone: a write to it fails (EIO), and the stop after it must still happen."""
    from transfer_rec import cli

    class Gone:
        def write(self, text):
            raise OSError(5, "Input/output error")

        def flush(self):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys, "stderr", Gone())
    cli._tell("transfer-rec run: stopping the pipeline run")  # no error


def test_the_heartbeat_survives_a_worker_ending_while_it_lists_them(monkeypatch):
    from transfer_rec.runtime import signals

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    listed = psutil.Process(ended.pid)
    ended.wait()  # reaped: listed a moment ago, gone now
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setattr(
            psutil.Process, "children", lambda self, recursive=False: [listed, psutil.Process(alive.pid)]
        )
        assert signals._children().startswith(f"{alive.pid} (")
    finally:
        alive.kill()
        alive.wait()


LEADER = """
import subprocess, sys, time
# a supervisor that moves its task into a session of its own (as Airflow's task runners), then the leader ends
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(3)
"""


def test_what_a_process_started_is_stopped_even_after_it_ended_on_its_own():
    from transfer_rec.runtime.processes import stop_group, wait_watching

    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = psutil.Process(int(leader.stdout.readline()))
    family: dict = {}
    try:
        assert wait_watching(leader, family, every=0.2) == 0, "the leader ended on its own"
        assert child.is_running(), "its child runs on, found from the leader no longer"
        stop_group(leader, known=family)
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert alive == []
    finally:
        if child.is_running():
            child.kill()
