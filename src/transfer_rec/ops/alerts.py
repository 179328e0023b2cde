"""What an operator reads first when a task fails: one line naming the stage, the platform, the error and where to
look."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from transfer_rec.io.state import StateLayout

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.log"


MAX_MESSAGE = 500


def failure_line(
    dag_id: str,
    task_id: str,
    label: str | None,
    run_id: str,
    attempt: int,
    error: BaseException | str | None,
    log_url: str | None,
) -> str:
    """A single line: which task of which run failed, on which platform, with the error (error_text)."""
    where = f"{task_id}[{label}]" if label not in (None, "", "-1") else task_id
    text = error_text(error)
    kind = type(error).__name__ if isinstance(error, BaseException) else "Error"
    return f"FAILED {dag_id}.{where} run={run_id} attempt={attempt}: {kind}: {text}" + (
        f" | log: {log_url}" if log_url else ""
    )


def error_text(error: BaseException | str | None) -> str:
    """An error's message as one line of at most MAX_MESSAGE characters (an error can quote a whole input). Its
    lines are folded, not cut to the first: a refused batch says what it broke on the lines below its first."""
    if error is None or error == "":
        return "no exception recorded"
    lines = [line.strip().removeprefix("- ") for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return "(the error carries no message)"
    text = lines[0] + "".join(("; " if n > 1 else " ") + line for n, line in enumerate(lines[1:], start=1))
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"... ({len(text):,} characters)"
    return text


def record_failure(line: str, layout: StateLayout | None = None) -> None:
    """Log the line and append it, time-stamped, to reports/failures.log. A file that cannot be written (the full
    disk that may have failed the task) is logged and does not raise: the failure callback still closes the run."""
    layout = layout or StateLayout.from_env()
    log.error(line)
    try:
        layout.reports.mkdir(parents=True, exist_ok=True)
        with open(layout.reports / FAILURES_FILE, "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.now(UTC).isoformat()} {line}\n")
    except OSError:
        log.exception("could not append the failure to %s", layout.reports / FAILURES_FILE)
