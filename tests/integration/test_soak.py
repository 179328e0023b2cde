"""Soak: the whole DAG, as `make run` runs it (`airflow dags test`), several times in a row on the embedded
platforms while both cores are kept busy. Fails on a run past its limit (a hang), a process left behind, or
results that differ between runs (the first run trains the champion; the later ones re-score it exactly and promote
nothing). Marked `soak` (in `make test-servers`, not in `make test`): ~50 minutes on a 2-core machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest
from make_run import start_make_run

from transfer_rec.runtime.processes import stop_group

RUNS = 3
LIMIT_S = 30 * 60

pytestmark = pytest.mark.soak


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def test_repeated_runs_under_load_finish_leave_nothing_and_agree(tmp_path):
    load = [_busy() for _ in range(os.cpu_count() or 2)]
    results = []
    try:
        for n in range(RUNS):
            run = start_make_run(tmp_path / "var", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                out, _ = run.communicate(timeout=LIMIT_S)
            except subprocess.TimeoutExpired:
                stop_group(run)
                pytest.fail(f"run {n + 1} hung: no end after {LIMIT_S} s")
            except BaseException:
                # an interrupted soak (Ctrl-C, a CI timeout) must not leave its run behind: it has a session of its own
                stop_group(run)
                raise
            assert run.returncode == 0, out[-3000:]
            mine = {p.pid for p in load}
            left = [p for p in psutil.Process().children(recursive=True) if p.pid not in mine]
            assert left == [], f"run {n + 1} left processes behind: {[p.cmdline()[:3] for p in left]}"
            summary = json.loads((tmp_path / "var" / "reports" / "latest.json").read_text())
            results.append(summary["targets"])
    finally:
        for p in load:
            stop_group(p, grace=(1.0, 1.0))
    first = results[0]
    assert first and all(later.keys() == first.keys() for later in results[1:])
    for n, later in enumerate(results[1:], start=2):
        for target, outcome in later.items():
            # every contender the first run had scores exactly the same; from the second run on the champion (the
            # first run's model) is one more contender, scored as it was promoted, and nothing new is promoted
            metrics = outcome["metrics"]
            for contender, values in first[target]["metrics"].items():
                assert metrics[contender] == values, f"run {n}, {target}: {contender} differs from run 1"
            assert metrics["champion"] == first[target]["metrics"]["candidate"], f"run {n}, {target}: champion"
            assert not outcome["decision"]["promoted"], f"run {n}, {target}: an identical model was re-promoted"
