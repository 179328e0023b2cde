"""Consecutive `make run`s under CPU load, as an operator's busy machine sees them: each run's wall time, exit code,
whether it trained or stopped at "no change", the load average, and every process it left behind.

    python -m bench.runs_under_load --runs 10 --busy 4 --force-every 3 --state /tmp/load-state \
        --out var/bench/load-runs.json

The first run (unless `--plain-first`) and every `--force-every`-th after it train (`RUN_ARGS=--force`); the others
run as a newcomer's second `make run` does (pull, validate, unify, then stop at check_inputs when nothing changed).
A run past `--limit` seconds counts as a hang: its whole process family is stopped and the series fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from transfer_rec.runtime.processes import stop_group

REPO = Path(__file__).resolve().parents[1]


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)]


def left_behind(state: Path, since: float, exclude: set[int]) -> list[dict]:
    """Processes started since `since` that still carry the run's state folder in their environment: what a run
    leaves behind, including orphans that were re-parented away from us."""
    found = []
    for p in psutil.process_iter(["pid", "create_time", "cmdline"]):
        if p.pid in exclude or p.pid == os.getpid() or (p.info["create_time"] or 0) < since:
            continue
        try:
            if p.environ().get("TRANSFER_REC_STATE_DIR") == str(state):
                found.append({"pid": p.pid, "cmdline": (p.info["cmdline"] or [])[:4]})
        except psutil.Error:
            continue
    return found


def run_once(state: Path, force: bool, limit_s: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "TRANSFER_REC"))}
    args = ["make", "-C", str(REPO), "run", f"STATE={state}"] + (["RUN_ARGS=--force"] if force else [])
    started = time.time()
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=limit_s)
        hung = False
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, hung = proc.communicate()[0] or "", True
    wall = time.time() - started
    time.sleep(2.0)  # let a stopping process family finish exiting before it is counted as left behind
    lines = [line for line in out.splitlines() if line.strip()]
    return {
        "forced": force,
        "wall_s": round(wall, 1),
        "exit_code": proc.returncode,
        "hung": hung,
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "trained": any(line.startswith("platforms") for line in lines),
        "tail": lines[-6:],
        "_started": started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", type=int, default=4, help="busy-loop processes kept running throughout")
    parser.add_argument("--force-every", type=int, default=3, help="every n-th run after the first trains (0: none)")
    parser.add_argument(
        "--plain-first", action="store_true", help="the first run does not force training (a state that has run)"
    )
    parser.add_argument("--limit", type=float, default=40 * 60, help="seconds after which a run counts as hung")
    parser.add_argument("--state", type=Path, required=True, help="state folder (a fresh one: the first run inits)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    state = args.state.resolve()
    load = _busy(args.busy)
    busy_pids = {p.pid for p in load}
    runs: list[dict] = []
    try:
        for n in range(args.runs):
            force = (n == 0 and not args.plain_first) or (n > 0 and args.force_every > 0 and n % args.force_every == 0)
            result = run_once(state, force, args.limit)
            result["left_behind"] = left_behind(state, result.pop("_started"), busy_pids)
            runs.append(result)
            print(
                f"run {n + 1}: {'forced' if force else 'plain '} {result['wall_s']:7.1f} s exit {result['exit_code']}"
                f" load {result['load_1min_before']:.1f}->{result['load_1min_after']:.1f}"
                f" left {len(result['left_behind'])}",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"busy": args.busy, "runs": runs}, indent=2))
            if result["hung"] or result["exit_code"] != 0:
                break
    finally:
        for p in load:
            stop_group(p, grace=(1.0, 1.0))
    ok = len(runs) == args.runs and all(r["exit_code"] == 0 and not r["left_behind"] for r in runs)
    print("all runs finished and left nothing behind" if ok else "FAILED: see " + str(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
