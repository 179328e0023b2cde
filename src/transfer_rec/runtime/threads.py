"""Threads: torch's thread budget, set by the stage that trains or scores (config `runtime.torch_threads`), never at
import; and numpy work on disjoint blocks of rows spread over the available CPUs (`in_blocks`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_torch_threads(count: int | None = None) -> int:
    """Give torch `count` intra-op threads (default: the CPUs available); returns the number set."""
    import torch

    threads = max(1, int(count or available_cpus()))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def in_blocks(work: Callable[[slice], None], length: int, block: int) -> None:
    """Call `work` on consecutive slices of range(length), `block` long, on as many threads as CPUs are available:
    for numpy work on disjoint rows, which releases the GIL (each slice's result is the same whichever thread
    computes it)."""
    blocks = [slice(start, min(start + block, length)) for start in range(0, length, block)]
    if len(blocks) <= 1 or available_cpus() == 1:
        for rows in blocks:
            work(rows)
        return
    with ThreadPoolExecutor(max_workers=min(len(blocks), available_cpus())) as pool:
        for _ in pool.map(work, blocks):  # re-raises a block's exception
            pass
