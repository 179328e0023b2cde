"""How long `make run` takes to stop when its supervisor sends SIGTERM while a given stage runs, and what it leaves.

    python -m bench.stop_by_sigterm --stage finetune --state /tmp/stop-state

Starts `make run RUN_ARGS=--force` on its own state folder, waits until the stage's task starts (and `--inside`
seconds more), sends SIGTERM to `transfer-rec run` (what a supervisor or Ctrl-C reaches), and prints the seconds
until `make` exits and until every process it started is gone, and any process still alive after a minute.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from transfer_rec.runtime.processes import stop_group

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="finetune", help="the task to stop the run in")
    parser.add_argument("--state", type=Path, required=True, help="a state folder of its own (var/ is left alone)")
    parser.add_argument("--inside", type=float, default=3.0, help="seconds into the stage before the signal")
    parser.add_argument("--wait", type=float, default=1800.0, help="at most this long for the stage to start")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "TRANSFER_REC"))}
    make = subprocess.Popen(
        ["make", "-C", str(REPO), "run", f"STATE={args.state}", "RUN_ARGS=--force"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log = args.state / "last-run.log"
        deadline = time.monotonic() + args.wait
        while not (log.exists() and f"starting task_id={args.stage}" in log.read_text()):
            if time.monotonic() > deadline or make.poll() is not None:
                raise SystemExit(f"the {args.stage} task never started")
            time.sleep(0.5)
        time.sleep(args.inside)
        family = psutil.Process(make.pid).children(recursive=True)
        runner = next(p for p in family if "transfer-rec" in " ".join(p.cmdline()))
        sent = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        make.wait(timeout=120)
        exited = time.monotonic() - sent
        _, alive = psutil.wait_procs(family, timeout=60)
    finally:
        # whatever ended the measurement (no such stage, Ctrl-C, a run that did not stop), the run does not outlive it
        stop_group(make, grace=(1.0, 1.0))
    print(
        f"stage {args.stage}: make exited {exited:.1f} s after SIGTERM (exit {make.returncode}); every process it "
        f"started gone after {time.monotonic() - sent:.1f} s; still alive: {[p.cmdline()[:3] for p in alive]}; "
        f"load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
