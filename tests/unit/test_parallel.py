"""Work in forked processes: the result comes back, an exception is raised in the parent, a child can be stopped."""

import os
import signal
import time

import pytest

from transfer_rec.runtime.workers import Forked


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
