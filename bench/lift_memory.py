"""Peak memory and time of the short-history parts' co-occurrence lifts as a fine-tune makes them: the pooled lift
(source and target users), the target's own, and their mix at a source share of 0.5. On synthetic power-law rows
(bench.model_memory.power_law) over `--items` items.

    python -m bench.lift_memory --source-users 150000 --target-users 20000 --items 20000 --per-user 60 [--pruned N]

Without `--pruned` the lifts are dense items x items (the source's co-occurrences counted once, as the fine-tune
shares them between fits); with `--pruned N` each item keeps its N largest lifts (recommender/short_history.py,
pruned_lift), as past `short_history.lift_dense_max`. What pruning costs in accuracy is measured on real data (the
cold-start protocol), not here: these rows have no structure for a lift to find. Run each in a fresh process: the
peak is the process's (ru_maxrss). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import scipy.sparse as sp

from bench.model_memory import power_law
from transfer_rec.recommender.short_history import cooccurrence_lift, cooccurrences, pruned_lift
from transfer_rec.selection.short_history import mixed_lift


def _gib(kilobytes: int) -> float:
    return round(kilobytes / 2**20, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lift_memory", description=__doc__)
    parser.add_argument("--source-users", type=int, default=150_000)
    parser.add_argument("--target-users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--per-user", type=int, default=60)
    parser.add_argument("--pruned", type=int, help="keep this many lifts per item (default: dense)")
    args = parser.parse_args(argv)
    source = power_law(args.source_users, args.items, args.per_user, seed=0)
    target = power_law(args.target_users, args.items, args.per_user, seed=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if args.pruned:
        pooled = pruned_lift([source, target], args.pruned)
        own = pruned_lift([target], args.pruned)
    else:
        pooled = cooccurrence_lift([target], counted=[cooccurrences(source)])
        own = cooccurrence_lift([target])
    mixed = mixed_lift(pooled, own, 0.5)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {
        "lift": f"pruned {args.pruned}" if args.pruned else "dense",
        "source_interactions": int(source.nnz),
        "target_interactions": int(target.nnz),
        "items": args.items,
        "seconds": round(seconds, 1),
        "peak_gib": _gib(peak),
        "peak_before_lifts_gib": _gib(before),
        "stored_entries": int(mixed.nnz) if sp.issparse(mixed) else int(mixed.size),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
