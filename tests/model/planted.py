"""A planted two-platform world taken through the pipeline's own stages (pull, validate, unify, features)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bench.synthetic import SyntheticPlatform, generate, write_config
from transfer_rec.config import PipelineConfig, load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import FeatureSet
from transfer_rec.stages.features import build_features
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import validate_batch

# Small, fast training settings under which the planted transfer signal is still learnt.
PLANTED_TRAINING = {
    "epochs_pretrain": 8,
    "epochs_finetune": 15,
    "patience": 3,
    "hidden": 64,
    "batch_size": 128,
    "learning_rate": 0.005,
    "seed": 11,
}


def planted_features(
    tmp_path: Path,
    monkeypatch: Any,
    platforms: list[SyntheticPlatform],
    training: dict,
    run_key: str,
    **generate_options: Any,
) -> tuple[PipelineConfig, FeatureSet]:
    """Generate the platforms (200 items, seed 5), point config and state at tmp_path, and build the features."""
    generated = generate(tmp_path / "exports", platforms, n_items=200, seed=5, **generate_options)
    config_path = write_config(tmp_path / "pipeline.yaml", generated, training=training)
    monkeypatch.setenv("TRANSFER_REC_CONFIG", str(config_path))
    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    # the default suites of these platforms stay with this world, not in the session's GX copy
    gx_dir = tmp_path / "great_expectations"
    if not gx_dir.exists():
        shutil.copytree(Path(os.environ["TRANSFER_REC_GX_DIR"]), gx_dir)
    monkeypatch.setenv("TRANSFER_REC_GX_DIR", str(gx_dir))
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "b"), p, layout) for p in config.platforms]
    return config, build_features(unify(validated, config, layout), config, layout, run_key)
