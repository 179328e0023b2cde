"""Cold start on planted data: new users are helped by what the source's users teach (profile tastes, item
co-occurrences), and only when the platforms share their items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import coldstart
from tasks.synthetic import SyntheticPlatform
from tests.model.planted import planted_features

TRAINING = {"epochs_pretrain": 8, "epochs_finetune": 15, "patience": 3, "hidden": 64, "batch_size": 128,
            "learning_rate": 0.005, "seed": 11, "item_grid": []}
VARIANT = "+profile+cooc"
SHORT = (0, 1, 3)


def cold_report(tmp_path: Path, monkeypatch, permute: bool = False) -> dict:
    """A big source and a small target whose users' tastes follow their profile, through the cold-start protocol."""
    platforms = [SyntheticPlatform("big", "source", users=1500, interactions_per_user=30),
                 SyntheticPlatform("small", "target", users=150, interactions_per_user=10, catalogue_share=0.8)]
    config, features = planted_features(tmp_path, monkeypatch, platforms, TRAINING, "cold-test",
                                        permute_target_items=permute, profile_taste=1.0)
    return coldstart.run_seed(features, config, 11, None, warm_ablation=False, variants=("base", VARIANT))


def ndcg(report: dict, name: str, k: int) -> float:
    return report["cold"][name][k]["ndcg"]


def best_target_only(report: dict, k: int) -> float:
    return max(ndcg(report, n, k) for n in ("ease", "target_only base", f"target_only {VARIANT}"))


def gain(report: dict) -> float:
    """Mean NDCG@10 gain of transfer over the best target-only contender, over short histories."""
    return float(np.mean([ndcg(report, f"transfer {VARIANT}", k) - best_target_only(report, k) for k in SHORT]))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield cold_report(tmp_path_factory.mktemp("shared"), monkeypatch)
    finally:
        monkeypatch.undo()


def test_transfer_beats_target_only_for_new_users(shared):
    for k in SHORT:
        assert ndcg(shared, f"transfer {VARIANT}", k) > best_target_only(shared, k) * 1.05, (k, shared["cold"])


def test_profile_prior_beats_popularity_with_no_history(shared):
    assert ndcg(shared, f"transfer {VARIANT}", 0) > ndcg(shared, "popularity", 0) * 1.10, shared["cold"]
    # the target's own users teach it too, if less well
    assert ndcg(shared, f"target_only {VARIANT}", 0) > ndcg(shared, "popularity", 0), shared["cold"]


def test_permuting_item_ids_across_platforms_removes_the_cold_start_gain(shared, tmp_path, monkeypatch):
    permuted = cold_report(tmp_path / "permuted", monkeypatch, permute=True)
    assert gain(shared) > 0
    assert gain(permuted) < gain(shared) / 2, (gain(shared), gain(permuted))
