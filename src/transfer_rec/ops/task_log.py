"""A task's log as a file the Airflow UI reads, for runs whose tasks Airflow executes in-process.

`make run` runs the DAG with `airflow dags test`, which executes every task in its own process with no log
supervisor: what the tasks log goes to the console (var/last-run.log), and the UI's log tab for those task
instances is empty. Under `transfer-rec run` each task also writes its log records where the UI looks for them, in
the JSON-lines form Airflow's own task logs have. Runs by a scheduler do not need this and do not do it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

# Set by `transfer-rec run` for the `airflow dags test` it starts.
ENV = "TRANSFER_REC_TASK_LOG_FILES"


def wanted() -> bool:
    """Whether tasks here write their own log files (only under `transfer-rec run`)."""
    return os.environ.get(ENV) == "1"


class JsonLinesHandler(logging.Handler):
    """Log records as Airflow's structured task-log lines: timestamp, level, logger, event."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = record.getMessage()
            if record.exc_info:
                event += "\n" + logging.Formatter().formatException(record.exc_info)
            line = {
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": event,
            }
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        except Exception:  # a log file that cannot be written must not fail the task
            self.handleError(record)


@contextmanager
def captured(path: Path | None, task: str) -> Iterator[None]:
    """While the block runs, the process's log records (INFO and up) also go to `path`; an exception leaving the
    block is logged there with its traceback. No path: nothing changes."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = JsonLinesHandler(path)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    log = logging.getLogger("transfer_rec.task")
    log.info("%s: started (log written by transfer-rec run; Airflow ran the task in-process)", task)
    try:
        yield
        log.info("%s: done", task)
    except BaseException as error:
        # a skip (nothing changed, same data) is an outcome, not a failure: the package never imports Airflow, so
        # its skip is known by name
        if any(kind.__name__ == "AirflowSkipException" for kind in type(error).__mro__):
            log.info("%s: skipped: %s", task, error)
        else:
            log.exception("%s: failed", task)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
