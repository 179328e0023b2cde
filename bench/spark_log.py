"""Where a Spark run's time went, read from its event log: each SQL execution's span, with the Python line that
started it and what its plan does (scans, shuffles, windows, cache builds), and the spans summed by that line.

    python -m bench.spark_log DIR_OR_FILE [--top 30]

Turn the log on for a run with the world config's `spark.conf` (`spark.eventLog.enabled: "true"`,
`spark.eventLog.dir: file:///some/dir`); the log read is the newest in that folder (Spark 4 writes a folder of
zstd-compressed parts per application: they are read with the `zstd` command).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

START = "org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionStart"
END = "org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionEnd"
# What a plan does that costs per row, counted from its physical plan's node names.
PLAN_NODES = {"Exchange": "shuffle", "Window": "window", "InMemoryRelation": "cache", "Sort ": "sort", "Scan ": "scan"}


@dataclass
class Execution:
    id: int
    started: float
    ended: float
    site: str
    plan: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def shape(self) -> str:
        counts = {label: self.plan.count(node) for node, label in PLAN_NODES.items()}
        return " ".join(f"{n} {label}" for label, n in counts.items() if n)


def log_lines(path: Path) -> list[str]:
    """The event log's lines: a file, an application's folder of parts, or the newest log in a log folder."""
    if path.is_dir() and not path.name.startswith("eventlog_v2_"):
        logs = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not logs:
            raise SystemExit(f"{path}: no event log in it")
        path = max(logs, key=lambda p: p.stat().st_mtime)
    parts = (
        sorted((p for p in path.iterdir() if p.name.startswith("events_")), key=lambda p: int(p.name.split("_")[1]))
        if path.is_dir()
        else [path]
    )
    lines: list[str] = []
    for part in parts:
        if part.suffix in (".zstd", ".zst"):
            if not shutil.which("zstd"):
                raise SystemExit(
                    f"{part}: a zstd-compressed event log part and no `zstd` command to unpack it (apt-get install "
                    'zstd, or log the run with spark.eventLog.compress: "false")'
                )
            text = subprocess.run(["zstd", "-dc", str(part)], check=True, capture_output=True, text=True).stdout
        else:
            text = part.read_text()
        lines += text.splitlines()
    return lines


def _site(event: dict) -> str:
    """The call site Spark recorded (pyspark records the first Python frame outside pyspark), shortened to a path
    under the package or the library."""
    text = event.get("description") or ""
    match = re.search(r"(\w+) at (\S+):(\d+)", text)
    if not match:
        return text[:80]
    action, path, line = match.groups()
    for marker in ("transfer_rec/", "great_expectations/", "bench/"):
        if marker in path:
            path = marker + path.split(marker, 1)[1]
            break
    return f"{action} at {path}:{line}"


def executions(path: Path) -> list[Execution]:
    started: dict[int, dict] = {}
    done = []
    for line in log_lines(path):
        event = json.loads(line)
        kind = event.get("Event")
        if kind == START and event.get("rootExecutionId", event["executionId"]) == event["executionId"]:
            started[event["executionId"]] = event
        elif kind == END and event["executionId"] in started:
            begin = started.pop(event["executionId"])
            plan = begin.get("physicalPlanDescription") or ""
            done.append(Execution(event["executionId"], begin["time"] / 1e3, event["time"] / 1e3, _site(begin), plan))
    return sorted(done, key=lambda e: e.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="an event log file, or the folder of the newest one")
    parser.add_argument("--top", type=int, default=30, help="how many of the longest call sites to list")
    args = parser.parse_args()
    runs = executions(args.log)
    if not runs:
        raise SystemExit(f"{args.log}: no SQL execution in the log")
    origin = runs[0].started
    spans = sum(e.seconds for e in runs)
    print(f"{len(runs)} SQL executions over {runs[-1].ended - origin:.1f} s, {spans:.1f} s of spans")
    print("\n  start s   span s  call site  [plan]")
    for e in runs:
        if e.seconds >= 1.0:
            print(f"{e.started - origin:8.1f} {e.seconds:8.1f}  {e.site}  [{e.shape()}]")
    by_site: dict[str, list[float]] = defaultdict(list)
    for e in runs:
        by_site[e.site].append(e.seconds)
    print("\n   total s  runs  call site")
    for site, spans in sorted(by_site.items(), key=lambda kv: -sum(kv[1]))[: args.top]:
        print(f"{sum(spans):10.1f} {len(spans):5d}  {site}")


if __name__ == "__main__":
    main()
