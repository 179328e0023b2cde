"""Cold start on planted data: new users are helped by what the source's users teach (profile tastes, item
co-occurrences), and only when the platforms share their items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.model.planted import PLANTED_TRAINING, planted_features

from bench import coldstart
from bench.synthetic import SyntheticPlatform

TRAINING = {**PLANTED_TRAINING, "item_grid": []}
VARIANT = "+profile+cooc"
SHORT = (0, 1, 3)


def cold_report(tmp_path: Path, monkeypatch, permute: bool = False) -> dict:
    """A big source and a small target whose users' tastes follow their profile, through the cold-start protocol."""
    platforms = [
        SyntheticPlatform("big", "source", users=1500, interactions_per_user=30),
        SyntheticPlatform("small", "target", users=250, interactions_per_user=10, catalogue_share=0.8),
    ]
    config, features = planted_features(
        tmp_path, monkeypatch, platforms, TRAINING, "cold-test", permute_target_items=permute, profile_taste=1.0
    )
    return coldstart.run_seed(features, config, 11, None, warm_ablation=False, variants=("base", VARIANT))


def ndcg(report: dict, name: str, k: int) -> float:
    return report["cold"][name][k]["ndcg"]


def best_target_only(report: dict, k: int) -> float:
    return max(ndcg(report, n, k) for n in ("popularity", "ease", "target_only base", f"target_only {VARIANT}"))


def gain(report: dict) -> float:
    """Mean NDCG@10 gain of transfer over the best target-only contender, over short histories."""
    return float(np.mean([ndcg(report, f"transfer {VARIANT}", k) - best_target_only(report, k) for k in SHORT]))


def _module_report(tmp_path_factory, permute: bool) -> dict:
    monkeypatch = pytest.MonkeyPatch()
    try:
        return cold_report(tmp_path_factory.mktemp("permuted" if permute else "shared"), monkeypatch, permute)
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return _module_report(tmp_path_factory, permute=False)


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    return _module_report(tmp_path_factory, permute=True)


def source_share(report: dict) -> float:
    return report["selection"][f"transfer {VARIANT}"]["source_share"]["share"]


def test_transfer_beats_target_only_for_new_users(shared):
    for k in SHORT:
        assert ndcg(shared, f"transfer {VARIANT}", k) > best_target_only(shared, k) * 1.05, (k, shared["cold"])


def test_profile_prior_beats_popularity_with_no_history(shared):
    assert ndcg(shared, f"transfer {VARIANT}", 0) > ndcg(shared, "popularity", 0) * 1.10, shared["cold"]
    # the target's own users teach it too, if less well
    assert ndcg(shared, f"target_only {VARIANT}", 0) > ndcg(shared, "popularity", 0), shared["cold"]


def test_permuting_item_ids_across_platforms_removes_the_cold_start_gain(shared, permuted):
    assert gain(shared) > 0
    assert gain(permuted) < gain(shared) / 2, (gain(shared), gain(permuted))


def test_source_share_guard_keeps_a_matching_source_and_drops_a_permuted_one(shared, permuted):
    """Cross-fitted on valid: the pooled prior stays where the platforms share their items; where they do not, the
    target's own prior replaces it, so new users with no history fare as well as under the target-only model
    (unguarded, the permuted source's prior put them far below popularity)."""
    for name, report in (("shared items", shared), ("permuted items", permuted)):  # pytest -s shows them
        print(f"\n{name}: NDCG@10 by k, source share {source_share(report)}")
        for contender, per_k in report["cold"].items():
            print(f"  {contender:<28}" + " ".join(f"{per_k[k]['ndcg']:.4f}" for k in per_k))
    assert source_share(shared) == 1.0, shared["selection"]
    assert source_share(permuted) == 0.0, permuted["selection"]
    cold = permuted["cold"]
    assert ndcg(permuted, f"transfer {VARIANT}", 0) >= 0.95 * ndcg(permuted, f"target_only {VARIANT}", 0), cold
    assert ndcg(permuted, f"transfer {VARIANT}", 0) > ndcg(permuted, "popularity", 0), cold
