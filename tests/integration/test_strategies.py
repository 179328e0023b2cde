"""The fine-tuning strategy comparison: every variant starts from one pretrained model and runs the pipeline's
fine-tune with its own settings."""

import numpy as np

from tasks.config import load_config
from tasks.evaluate import held_out_metrics
from tasks.features import PlatformData, build_features
from tasks.metrics import mean_metrics
from tasks.models.transfer import TransferRecommender
from tasks.pull import pull_platform
from tasks.state import StateLayout
from tasks.strategies import compare
from tasks.train import fit_target, model_config, train_history
from tasks.unify import unify
from tasks.validate import validate_batch


def test_each_variant_fine_tunes_the_same_pretrained_model_with_its_own_settings(pipeline_env):
    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "s"), p, layout) for p in config.platforms]
    features = build_features(unify(validated, config, layout), config, layout, "strategies")
    source, target = config.source.name, config.targets[0].name
    variants = {"configured": {}, "frozen, no replay": {"strategy": "freeze_encoder", "source_replay": 0.0}}
    report = compare(features, config, source, target, variants)

    assert report["variants"]["frozen, no replay"]["strategy"] == "freeze_encoder"
    assert report["variants"]["frozen, no replay"]["source_replay"] == 0.0
    assert report["variants"]["configured"]["strategy"] == config.training.strategy
    # the configured variant is exactly the pipeline's pretrain + fine-tune (deterministic for a seed)
    data = PlatformData(features["dir"], target, features["n_items"])
    pretrained = TransferRecommender(features["n_items"], model_config(config))
    pretrained.pretrain(PlatformData(features["dir"], source, features["n_items"])
                        .matrix(rating_weight=config.training.rating_weight))
    model, _, _ = fit_target(features, target, config, pretrained)
    expected = mean_metrics(held_out_metrics(data, {"m": model.score(train_history(data, config))}, 10)["m"])
    assert np.isclose(report["variants"]["configured"]["metrics"]["ndcg"], expected["ndcg"])
    # the encoder's per-epoch validation curve: the frozen encoder learns otherwise
    curves = [report["variants"][name]["encoder_valid_ndcg"] for name in variants]
    assert all(curves) and curves[0] != curves[1]
