"""Work in forked processes (Linux): a child shares this process's memory copy-on-write, so the frames it reads are
not copied to it; only its result travels back (pickled). Used to keep both cores busy during ingest."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def can_fork() -> bool:
    """Whether this process may fork workers: Linux, and not itself a daemonic multiprocessing worker (Celery's and
    some executors' task processes are; they may not have children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def workers() -> int:
    """Worker processes to use: $TRANSFER_REC_WORKERS, default the CPUs this process may run on."""
    import os

    return int(os.environ.get("TRANSFER_REC_WORKERS") or len(os.sched_getaffinity(0)))


def _call(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        outcome = ("ok", fn(*args))
    except BaseException as exc:
        outcome = ("error", exc)
    try:
        conn.send(outcome)
    except Exception as exc:
        conn.send(("error", RuntimeError(f"{fn.__name__} in a forked process: {outcome[1]!r} ({exc})")))
    finally:
        conn.close()


class Forked:
    """fn(*args) running in a forked child (or here, when fork is not available) until `result()` is asked for."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.name = fn.__name__
        if not can_fork():
            self._process, self._outcome = None, ("ok", fn(*args))
            return
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_call, args=(send, fn, args))
        self._process.start()
        send.close()

    def result(self) -> Any:
        """The child's return value; its exception is raised here."""
        if self._process is not None:
            try:
                self._outcome = self._receive.recv()
            except EOFError:
                self._outcome = (
                    "error",
                    RuntimeError(
                        f"{self.name} in a forked process ended without a result (exit code {self._process.exitcode})"
                    ),
                )
            self._process.join()
            self._receive.close()
            self._process = None
        status, value = self._outcome
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it is still running (its result is dropped). SIGKILL: a SIGTERM handler inherited from
        the parent (Airflow's task runner installs one) would let the child run on."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._receive.close()
            self._process = None
            self._outcome = ("error", RuntimeError(f"{self.name} was cancelled"))
