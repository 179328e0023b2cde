"""The scale generator: native schemas and formats differ per platform, a cold-start cohort, planted overlap, and
its exports pass the pipeline's own pull + validate + unify."""

from pathlib import Path

import pandas as pd

from bench.scale import generate, ingest
from transfer_rec.config import load_config
from transfer_rec.io.formats import read_table


def test_generated_platforms_differ_and_ingest_cleanly(tmp_path):
    config_path = generate(tmp_path, interactions=30_000, n_items=600, seed=1)
    config = load_config(config_path)
    assert [p.format for p in config.platforms] == ["parquet", "csv", "jsonl"]
    assert len({tuple(p.columns["interactions"]) for p in config.platforms}) == 3, "native schemas differ"
    frames = {
        p.name: read_table(tmp_path / "exports" / p.name / p.files["interactions"], p.format, p.delimiter)
        for p in config.platforms
    }
    counts = {name: f.groupby(f.columns[0]).size() for name, f in frames.items()}
    assert (counts["nightschool"] <= 3).mean() > 0.2, "a cold-start cohort with 1-3 interactions"
    assert (counts["academy"] >= 5).all()
    items = {name: set(f.iloc[:, 1]) for name, f in frames.items()}
    assert items["bootcamp"] & items["academy"] and items["bootcamp"] - items["academy"], "partial overlap"
    assert frames["bootcamp"]["grade"].astype(int).max() > 5, "bootcamp rates on its own 1-10 scale"

    result = ingest(config_path, tmp_path / "state")
    assert result["rows"] == sum(len(f) for f in frames.values())
    assert sum(result["rows_out"].values()) == result["rows"], "generated data has no duplicates to drop"
    unified = pd.read_parquet(tmp_path / "state" / "lake" / "unified" / "current" / "interactions.parquet")
    assert len(unified) == result["rows"] and set(unified["platform"]) == set(frames)


# Run in a process of its own: an earlier test's children under the pytest worker (a Spark JVM, a server) would
# count in every reading and may grow or end between them.
PEAKS = """
import json, subprocess, sys
import numpy as np
from bench.scale import PeakMemory

mib = 2**20
with PeakMemory(interval=0.05) as base:
    pass
held = np.ones(512 * mib // 8)  # an earlier stage's peak, freed before the next stage starts
del held
with PeakMemory(interval=0.05) as quiet:
    pass
with PeakMemory(interval=0.05) as busy:
    # a worker holding 400 MiB for a second: only the sampling of worker processes can see it
    code = "import numpy, time; a = numpy.ones(50 * 2**20); time.sleep(1.0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
print(json.dumps({"base": base.pss, "quiet": quiet.pss, "busy": busy.pss}))
"""


def test_peak_memory_counts_a_stage_alone_and_its_worker_processes():
    import json
    import subprocess
    import sys

    mib = 2**20
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PEAKS], cwd=repo, capture_output=True, text=True, check=True, timeout=300
    )
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["quiet"] < peaks["base"] + 256 * mib, "a stage's peak must not include the stages before it"
    assert peaks["busy"] > peaks["base"] + 300 * mib, "a worker process's memory must count"
