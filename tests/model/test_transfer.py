"""Behaviour of the transfer recommender on planted data: transfer helps where structure is shared, and only then."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.model.planted import PLANTED_TRAINING, planted_features

from bench.synthetic import SyntheticPlatform
from transfer_rec.metrics.ranking import evaluate_scores
from transfer_rec.recommender.transfer import TransferRecommender
from transfer_rec.stages.features import PlatformData
from transfer_rec.stages.train import fit_target, new_model

TRAINING = PLANTED_TRAINING


def world(tmp_path: Path, monkeypatch, permute: bool = False) -> dict:
    """A big source and a small target whose users have short histories (the case transfer is for)."""
    platforms = [
        SyntheticPlatform("big", "source", users=1500, interactions_per_user=40),
        SyntheticPlatform("small", "target", users=150, interactions_per_user=10, catalogue_share=0.8),
    ]
    config, features = planted_features(
        tmp_path, monkeypatch, platforms, TRAINING, "model-test", permute_target_items=permute
    )
    return {"config": config, "features": features}


def source_model(w: dict) -> TransferRecommender:
    config, features = w["config"], w["features"]
    model = new_model(features.n_items, config)
    model.pretrain(PlatformData.of(features, config.sources[0].name).matrix())
    return model


def test_ndcg(w: dict, pretrained: TransferRecommender | None) -> float:
    model, _, data = fit_target(w["features"], "small", w["config"], pretrained)
    train, test = data.matrix("train"), data.matrix("test")
    return float(
        np.mean(evaluate_scores(model.score(train), data.matrix("train", "valid"), test, 10, data.item_mask())["ndcg"])
    )


test_ndcg.__test__ = False  # a helper, not a test


@pytest.fixture
def shared(tmp_path, monkeypatch):
    return world(tmp_path / "shared", monkeypatch)


def test_transfer_beats_target_only_when_structure_is_shared(shared):
    with_transfer = test_ndcg(shared, source_model(shared))
    alone = test_ndcg(shared, None)
    assert with_transfer > alone * 1.10, (with_transfer, alone)


def test_permuting_item_ids_across_platforms_removes_the_gain(shared, tmp_path, monkeypatch):
    gain = test_ndcg(shared, source_model(shared)) - test_ndcg(shared, None)
    permuted = world(tmp_path / "permuted", monkeypatch, permute=True)
    permuted_gain = test_ndcg(permuted, source_model(permuted)) - test_ndcg(permuted, None)
    assert gain > 0
    assert permuted_gain < gain / 2, (gain, permuted_gain)


def test_training_is_deterministic_for_a_seed(shared):
    a, _, data = fit_target(shared["features"], "small", shared["config"], source_model(shared))
    b, _, _ = fit_target(shared["features"], "small", shared["config"], source_model(shared))
    history = data.matrix("train")
    np.testing.assert_array_equal(a.score(history), b.score(history))
