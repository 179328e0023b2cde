"""Work in forked processes (Linux) that can never outlive, outwait or hang the process that started them.

A child shares its parent's memory copy-on-write, so the frames it reads are not copied to it; only its result
travels back (pickled), over a pipe of its own. Nothing is shared between children (no pool queue and no lock a
killed child could leave held), and every child:
- takes the default SIGTERM/SIGINT actions, not the handlers it inherited (Airflow's task runner installs a SIGTERM
  handler that does nothing in a child, so an inherited one lets a child ignore SIGTERM forever);
- is killed by the kernel when its parent dies (PR_SET_PDEATHSIG), however the parent dies;
- is waited for with a deadline, and killed when the deadline passes or when the parent stops waiting for any reason
  (an error in a sibling, SIGTERM turned into an exception, a timeout).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

_PR_SET_PDEATHSIG = 1


class WorkerTimeout(TimeoutError):
    """A worker process did not finish within its deadline; it was killed."""


def can_fork() -> bool:
    """Whether this process may fork workers: Linux, and not itself a daemonic multiprocessing worker (Celery's and
    some executors' task processes are; they may not have children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


# the config's runtime.workers while a stage runs (configured_workers); None: not set
_CONFIGURED: int | None = None


def workers() -> int:
    """Worker processes to use: $TRANSFER_REC_WORKERS, else the config's runtime.workers (configured_workers), else
    the CPUs this process may run on."""
    return int(os.environ.get("TRANSFER_REC_WORKERS") or _CONFIGURED or len(os.sched_getaffinity(0)))


@contextmanager
def configured_workers(count: int | None) -> Iterator[None]:
    """While inside, `workers()` is `count` (unless $TRANSFER_REC_WORKERS says otherwise; None: the CPUs)."""
    global _CONFIGURED
    before, _CONFIGURED = _CONFIGURED, count
    try:
        yield
    finally:
        _CONFIGURED = before


def worker_timeout() -> float | None:
    """Seconds a worker may run before it is killed: $TRANSFER_REC_WORKER_TIMEOUT, default one hour; 0 = none."""
    value = float(os.environ.get("TRANSFER_REC_WORKER_TIMEOUT") or 3600)
    return value if value > 0 else None


def _become_child() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the deadline and the parent's kill still bound the child
        pass


def _call(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    _become_child()
    try:
        outcome = ("ok", fn(*args))
    except BaseException as exc:
        outcome = ("error", exc)
        try:  # an exception the parent could not rebuild (its __init__ wants other arguments) would reach it as a
            pickle.loads(pickle.dumps(exc))  # TypeError from unpickling, not as what went wrong
        except Exception as unpicklable:
            outcome = ("error", RuntimeError(f"{fn.__name__} in a forked process: {exc!r} ({unpicklable})"))
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
        self.started = time.monotonic()
        if not can_fork():
            self._process, self._outcome = None, ("ok", fn(*args))
            return
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_call, args=(send, fn, args), daemon=True)
        self._process.start()
        send.close()

    @property
    def connection(self) -> Any:
        return self._receive if self._process is not None else None

    def result(self, timeout: float | None = -1.0) -> Any:
        """The child's return value; its exception is raised here. A child still running after `timeout` seconds
        (default: worker_timeout()) is killed and WorkerTimeout raised."""
        if timeout is not None and timeout < 0:
            timeout = worker_timeout()
        if self._process is not None:
            try:
                if not self._receive.poll(timeout):
                    self.cancel()
                    raise WorkerTimeout(
                        f"{self.name} in a forked process ran past its deadline of {timeout:.0f} s "
                        "and was killed (TRANSFER_REC_WORKER_TIMEOUT sets it)"
                    )
                self._outcome = self._receive.recv()
            except EOFError:
                self._process.join(5)
                self._outcome = (
                    "error",
                    RuntimeError(
                        f"{self.name} in a forked process ended without a result (exit code {self._process.exitcode})"
                    ),
                )
            finally:
                self.cancel(keep_outcome=True)
        status, value = self._outcome
        if status == "error":
            raise value
        return value

    def cancel(self, keep_outcome: bool = False) -> None:
        """Stop the child if it is still running (its result is dropped) and reap it. SIGKILL, because a child
        stuck in C code does not run Python signal handlers."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._receive.close()
        self._process = None
        if not keep_outcome:
            self._outcome = ("error", RuntimeError(f"{self.name} was cancelled"))


def forked_map(
    fn: Callable[[int], Any], indices: Iterable[int], count: int, timeout: float | None = -1.0
) -> dict[int, Any]:
    """fn(i) for every index, at most `count` forked children at a time, in the order given; returns {i: result}.
    The first error or timeout kills every running child and is raised; no child outlives this call."""
    todo = list(indices)
    deadline = worker_timeout() if timeout is not None and timeout < 0 else timeout
    running: dict[int, Forked] = {}
    done: dict[int, Any] = {}
    try:
        while todo or running:
            while todo and len(running) < count:
                index = todo.pop(0)
                running[index] = Forked(fn, index)
            waiting = {call.connection: index for index, call in running.items() if call.connection is not None}
            ready = wait(list(waiting), timeout=5.0) if waiting else []
            finished = [waiting[c] for c in ready] + [i for i, call in running.items() if call.connection is None]
            for index in finished:
                done[index] = running.pop(index).result(timeout=0)
            late = [
                i for i, call in running.items() if deadline is not None and time.monotonic() - call.started > deadline
            ]
            if late:
                raise WorkerTimeout(
                    f"{fn.__name__}({late[0]}) in a forked process ran past its deadline of "
                    f"{deadline:.0f} s and was killed (TRANSFER_REC_WORKER_TIMEOUT sets it)"
                )
    finally:
        for call in running.values():
            call.cancel()
    return done
