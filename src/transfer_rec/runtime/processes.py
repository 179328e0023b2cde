"""Stopping what we started: a process group and every descendant, so nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def descendants(pid: int) -> list[Any]:
    """Every live descendant of a process, as psutil processes (a kill through them never hits a reused pid)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_group(proc: subprocess.Popen, grace: tuple[float, float] = (20.0, 10.0)) -> None:
    """SIGINT to the process group, then SIGTERM, then SIGKILL; then SIGKILL to every descendant still alive, also
    those that left the group (Airflow puts each task runner into a process group of its own)."""
    import psutil

    family = {p.pid: p for p in descendants(proc.pid)}
    for sig, wait in ((signal.SIGINT, grace[0]), (signal.SIGTERM, grace[1]), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        family.update({p.pid: p for p in descendants(proc.pid)})
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in family.values():
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(family.values()), timeout=5)
