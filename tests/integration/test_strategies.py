"""The fine-tuning strategy comparison: every variant starts from one pretrained model and runs the pipeline's
fine-tune with its own settings."""

import numpy as np

from bench.strategies import compare
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.metrics.ranking import mean_metrics
from transfer_rec.stages.evaluate import held_out_metrics
from transfer_rec.stages.features import PlatformData, build_features
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.train import fit_target, new_model, train_history
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import validate_batch


def test_each_variant_fine_tunes_the_same_pretrained_model_with_its_own_settings(pipeline_env):
    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "s"), p, layout) for p in config.platforms]
    features = build_features(unify(validated, config, layout), config, layout, "strategies")
    source, target = config.sources[0].name, config.targets[0].name
    variants = {"configured": {}, "frozen, no replay": {"strategy": "freeze_encoder", "source_replay": 0.0}}
    report = compare(features, config, source, target, variants)

    # the configured variant is exactly the pipeline's pretrain + fine-tune (deterministic for a seed)
    data = PlatformData.of(features, target)
    pretrained = new_model(features.n_items, config)
    pretrained.pretrain(PlatformData.of(features, source).matrix(rating_weight=config.training.rating_weight))
    model, _, _ = fit_target(features, target, config, pretrained)
    expected = mean_metrics(held_out_metrics(data, {"m": model.score(train_history(data, config))}, 10)["m"])
    assert np.isclose(report["variants"]["configured"]["metrics"]["ndcg"], expected["ndcg"])
    # the other variant really fine-tuned otherwise: its own settings and another validation curve of the encoder
    # (its test metrics may still equal the configured one's when the item-item part carries the ranking)
    curves = [report["variants"][name]["encoder_valid_ndcg"] for name in variants]
    assert all(curves) and curves[0] != curves[1]
    frozen = report["variants"]["frozen, no replay"]
    assert (frozen["strategy"], frozen["source_replay"]) == ("freeze_encoder", 0.0)
