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


def wait_watching(proc: subprocess.Popen, family: dict[int, Any], every: float = 2.0) -> int:
    """proc.wait(), noting in `family` every descendant seen meanwhile: once the process has ended, the ones that
    moved into process groups of their own (Airflow's task runners) can no longer be found from it, and stop_group
    needs them (`known`)."""
    while True:
        for pid in [pid for pid, p in family.items() if not p.is_running()]:  # a days-long UI sees many short ones
            del family[pid]
        family.update({p.pid: p for p in descendants(proc.pid)})
        try:
            return proc.wait(every)
        except subprocess.TimeoutExpired:
            continue


def stop_group(
    proc: subprocess.Popen, grace: tuple[float, float] = (20.0, 10.0), known: dict[int, Any] | None = None
) -> None:
    """SIGINT to the process group, then SIGTERM, then SIGKILL; then SIGKILL to every descendant still alive, also
    those that left the group (Airflow puts each task runner into a process group of its own) and those in `known`
    (seen by wait_watching while the process lived: it may have ended before this, leaving them running)."""
    import psutil

    family = {**(known or {}), **{p.pid: p for p in descendants(proc.pid)}}
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
