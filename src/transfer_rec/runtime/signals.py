"""A stage stops when it is told to: SIGTERM becomes an exception in the stage's code, so its `finally` blocks run
(worker processes killed, half-written outputs removed) and the process ends.

Airflow 3's task runner handles SIGTERM by calling the operator's on_kill() and returning; a stage blocked in a
wait would then never notice it. The handler installed here calls that previous handler first, then raises.
Its time limit (execution_timeout) is a SIGALRM whose handler raises in the main thread: where that thread waits on
work the exception cannot reach (a Spark job), the stage would wait on past its limit, so the work is ended first
(`on_terminate` callbacks), then the orchestrator's handler raises as it would have.
A heartbeat thread logs that a long stage is still alive, with its children, so a quiet log is never ambiguous.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Terminated(SystemExit):
    """The process was asked to stop (SIGTERM) while a stage ran. A SystemExit, so no `except Exception` in a stage
    swallows it; the exit code is 128 + SIGTERM, as if the signal had ended the process."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


_ON_TERMINATE: list[Callable[[], None]] = []


def on_terminate(callback: Callable[[], None]) -> None:
    """Call `callback` when SIGTERM or the task's time limit stops a stage, before the stage's exception is raised:
    for work an exception in this process cannot reach, such as a Spark job the main thread waits on in the JVM."""
    _ON_TERMINATE.append(callback)


def hangup_stops() -> None:
    """A hangup (the terminal or ssh session closing) stops this process as SIGTERM does, through whatever SIGTERM
    handler is set. Its default would end the process at once, with no `finally`: what it started in a session of
    its own (which the hangup does not reach) would run on with no parent, and its run lock would be released
    beside it."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # started under nohup: asked to outlive the terminal
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


@contextmanager
def terminate_raises() -> Iterator[None]:
    """While inside, SIGTERM (after whatever handler was installed before has run) raises Terminated in the main
    thread. Outside the main thread signal handlers cannot be set; there it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    # a handler only where one is set: a stage outside an orchestrator's time limit keeps SIGALRM as it was
    limit = signal.getsignal(signal.SIGALRM)

    # the exception that stops the stage: clean-up code may fail after it (pyspark's, on a driver just ended), and
    # the stage must end with the reason it was stopped, not with that failure
    stopped: list[BaseException] = []

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            try:
                previous(signum, frame)
            except Exception:
                log.exception("the previous SIGTERM handler failed")
        log.warning("SIGTERM: stopping the stage (pid %d)", os.getpid())
        _end_unreachable_work()
        stopped.append(Terminated(signum))
        raise stopped[-1]

    def on_limit(signum: int, frame: Any) -> None:
        log.warning("SIGALRM (the task's time limit): stopping the stage (pid %d)", os.getpid())
        _end_unreachable_work()
        try:
            limit(signum, frame)  # the orchestrator's own: raises its timeout
        except BaseException as timeout:
            stopped.append(timeout)
            raise

    signal.signal(signal.SIGTERM, handler)
    if callable(limit):
        signal.signal(signal.SIGALRM, on_limit)
    try:
        yield
    except BaseException as error:
        if stopped and error is not stopped[0]:
            raise stopped[0] from error  # both are in the traceback
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if callable(limit):
            signal.signal(signal.SIGALRM, limit)


def _end_unreachable_work() -> None:
    for callback in list(_ON_TERMINATE):
        try:
            callback()
        except Exception:
            log.exception("a stop callback failed")


@contextmanager
def heartbeat(name: str, every: float = 60.0) -> Iterator[None]:
    """Log '<name> still running after N s' every `every` seconds (with live child processes) until the block ends."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            log.info(
                "%s still running after %.0f s (pid %d; worker processes: %s)",
                name,
                time.monotonic() - started,
                os.getpid(),
                _children() or "none",
            )

    thread = threading.Thread(target=beat, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


def _children() -> str:
    try:
        import psutil
    except ImportError:  # psutil ships with the dev tools; production images may lack it
        return "unknown"
    described = []
    for child in psutil.Process().children(recursive=True):
        try:  # a worker may end between the listing and this: it is simply no longer listed
            described.append(f"{child.pid} ({child.status()})")
        except psutil.Error:
            continue
    return ", ".join(described)


@contextmanager
def stage_guard(name: str, every: float = 60.0) -> Iterator[None]:
    """What every stage runs inside: SIGTERM stops it, and it reports that it is alive."""
    with terminate_raises(), heartbeat(name, every):
        yield
