"""One Adam step over the encoder's weights at a catalogue's size: torch's per-tensor loop, its multi-tensor
(foreach) variant and its fused kernel, on the CPU.

    python -m bench.adam_step [--items 20000] [--hidden 600] [--steps 20]

The encoder (recommender/transfer.py) has an input layer items x hidden and an output layer hidden x items; every
fine-tune and pretraining step updates all of them. Prints milliseconds per step (the mean of `steps` after one
warm-up step), each kind twice, alternating.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def step_ms(kind: str, items: int, hidden: int, steps: int) -> float:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(items, hidden), torch.nn.Linear(hidden, items)]
    params = [p for layer in layers for p in layer.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimiser = torch.optim.Adam(params, lr=1e-3, foreach=kind == "foreach", fused=kind == "fused")
    optimiser.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimiser.step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=600)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    out: dict[str, list[float]] = {}
    for kind in ("loop", "foreach", "fused") * 2:
        out.setdefault(kind, []).append(round(step_ms(kind, args.items, args.hidden, args.steps), 1))
    print(json.dumps({"items": args.items, "hidden": args.hidden, "threads": torch.get_num_threads(), "ms": out}))


if __name__ == "__main__":
    main()
