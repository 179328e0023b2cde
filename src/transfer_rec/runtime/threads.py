"""torch's thread budget, set by the stage that trains or scores (config `runtime.torch_threads`), never at import."""

from __future__ import annotations

import os


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
