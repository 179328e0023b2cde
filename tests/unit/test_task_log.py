"""A task's log file for in-process runs: Airflow's JSON-lines form, failures with their traceback, nothing left
attached afterwards."""

import json
import logging

import pytest

from transfer_rec.ops.task_log import captured


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_go_to_the_file_while_the_task_runs(tmp_path):
    path = tmp_path / "dag_id=d" / "attempt=1.log"
    handlers = list(logging.getLogger().handlers)
    with captured(path, "unify"):
        logging.getLogger("transfer_rec.stages.unify").info("unified %s: %d rows", "village", 42)
    logging.getLogger("transfer_rec.stages.unify").info("after the task")
    events = lines(path)
    assert [e["event"] for e in events] == [
        "unify: started (log written by transfer-rec run; Airflow ran the task in-process)",
        "unified village: 42 rows",
        "unify: done",
    ]
    assert events[1]["level"] == "info" and events[1]["logger"] == "transfer_rec.stages.unify"
    assert events[1]["timestamp"].endswith("+00:00")
    assert logging.getLogger().handlers == handlers


def test_a_failure_is_logged_with_its_traceback_and_raised(tmp_path):
    path = tmp_path / "attempt=1.log"
    with pytest.raises(ValueError, match="bad batch"), captured(path, "validate"):
        raise ValueError("bad batch")
    last = lines(path)[-1]
    assert last["level"] == "error" and last["event"].startswith("validate: failed")
    assert "Traceback" in last["event"] and "ValueError: bad batch" in last["event"]


def test_without_a_path_logging_is_left_as_it_is():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with captured(None, "plan"):
        assert root.handlers == handlers and root.level == level, "no handler added, no level changed"
        logging.getLogger("x").info("hello")
    assert root.handlers == handlers and root.level == level


def test_a_skip_is_logged_as_a_skip_not_as_a_failure(tmp_path):
    class AirflowSkipException(Exception):  # Airflow's, known by name (the package never imports Airflow)
        pass

    path = tmp_path / "attempt=1.log"
    with pytest.raises(AirflowSkipException), captured(path, "check_inputs"):
        raise AirflowSkipException("unchanged: the champion was trained on these inputs")
    last = lines(path)[-1]
    assert last["level"] == "info" and last["event"] == (
        "check_inputs: skipped: unchanged: the champion was trained on these inputs"
    )
    assert "Traceback" not in path.read_text()
