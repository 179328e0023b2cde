"""The event-log reader (bench/spark_log.py): root SQL executions only, their spans, the Python line that started
each, and a Spark 4 application folder of zstd-compressed parts read in order."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.spark_log import END, START, executions

SITE = "collect at /env/site-packages/great_expectations/execution_engine/sparkdf_execution_engine.py:1020"


def _events() -> list[dict]:
    def start(i: int, at: int, description: str, root: int | None = None, plan: str = "") -> dict:
        return {
            "Event": START,
            "executionId": i,
            "rootExecutionId": i if root is None else root,
            "description": description,
            "physicalPlanDescription": plan,
            "time": at,
        }

    return [
        {"Event": "SparkListenerApplicationStart", "Timestamp": 0},
        start(0, 1_000, "count at /repo/src/transfer_rec/spark/unify.py:99", plan="Exchange\nExchange\nScan parquet"),
        start(1, 1_500, "count at /repo/src/transfer_rec/spark/unify.py:99", root=0),  # nested: inside 0's span
        {"Event": END, "executionId": 1, "time": 2_000},
        {"Event": END, "executionId": 0, "time": 4_000},
        start(2, 5_000, SITE, plan="Window\nExchange"),
        {"Event": END, "executionId": 2, "time": 5_500},
        start(3, 6_000, SITE),
        {"Event": END, "executionId": 3, "time": 8_000},
        start(4, 9_000, SITE),  # never ended (the application died): not counted
    ]


def test_root_executions_with_their_spans_sites_and_plans(tmp_path):
    log = tmp_path / "app-1"
    log.write_text("\n".join(json.dumps(e) for e in _events()) + "\n")
    runs = executions(tmp_path)  # a log folder: its newest log
    assert [r.id for r in runs] == [0, 2, 3]
    assert [r.seconds for r in runs] == [3.0, 0.5, 2.0]
    assert runs[0].site == "count at transfer_rec/spark/unify.py:99"
    assert runs[1].site == "collect at great_expectations/execution_engine/sparkdf_execution_engine.py:1020"
    assert runs[0].shape() == "2 shuffle 1 scan" and runs[1].shape() == "1 shuffle 1 window"


@pytest.mark.skipif(not shutil.which("zstd"), reason="the zstd command unpacks Spark 4's compressed log parts")
def test_an_application_folder_of_compressed_parts_is_read_in_part_order(tmp_path):
    events = [json.dumps(e) for e in _events()]
    app = tmp_path / "eventlog_v2_local-1"
    app.mkdir()
    # part 10 after part 2: ordered by number, not by name; execution 2 starts in part 2 and ends in part 10, so
    # read in the wrong order its end comes before its start and it is lost
    for number, lines in ((2, events[:6]), (10, events[6:])):
        plain = app / f"events_{number}_local-1"
        plain.write_text("\n".join(lines) + "\n")
        subprocess.run(["zstd", "-q", "--rm", str(plain), "-o", f"{plain}.zstd"], check=True)
    runs = executions(app)
    assert [r.id for r in runs] == [0, 2, 3]
    assert sum(r.seconds for r in runs) == pytest.approx(5.5)
