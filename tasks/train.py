"""Stages 5 and 6: pretrain the recommender on the source platform, fine-tune it on each target platform."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import torch

from tasks import tracking
from tasks.bundle import ModelBundle
from tasks.config import PipelineConfig, TrainingConfig
from tasks.features import PlatformData
from tasks.models.transfer import TransferConfig, TransferRecommender
from tasks.state import StateLayout

log = logging.getLogger(__name__)

torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))


def model_config(config: PipelineConfig) -> TransferConfig:
    return TransferConfig(**config.training.model_dump(), k=config.evaluation.k)


def train_history(data: PlatformData, config: PipelineConfig):
    """A platform's train interactions as the model takes histories: rating-weighted when so configured."""
    return data.matrix("train", rating_weight=config.training.rating_weight)


def _log_epoch(entry: dict[str, Any]) -> None:
    log.info("%s epoch %d: %s", entry["stage"], entry["epoch"],
             ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if isinstance(v, float)))


def pretrain(features: dict[str, Any], config: PipelineConfig, layout: StateLayout, run_key: str,
             parent_run_id: str) -> dict[str, Any]:
    """Train on every source interaction; save the checkpoint under models/<run_key>/pretrained.pt."""
    source = PlatformData(Path(features["dir"]), config.source.name, features["n_items"])
    model = TransferRecommender(features["n_items"], model_config(config))
    started = time.perf_counter()
    with tracking.stage_run(layout, run_key, "pretrain", parent_run_id, {"platform": config.source.name}) as run:
        mlflow.log_params({"platform": config.source.name, **model_config(config).__dict__})
        history = model.pretrain(source.matrix(rating_weight=config.training.rating_weight), log=_log_epoch)
        tracking.log_epochs(history)
        checkpoint = layout.models / run_key / "pretrained.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state(), checkpoint)
        seconds = time.perf_counter() - started
        mlflow.log_metric("fit_seconds", seconds)
    return {"checkpoint": str(checkpoint), "run_id": run.info.run_id, "epochs": len(history),
            "users": int(len(source.user_ids)), "seconds": seconds}


def with_training(config: PipelineConfig, **update: Any) -> PipelineConfig:
    """The config with some training settings changed (validated like the config file: a bad value is refused)."""
    training = TrainingConfig.model_validate({**config.training.model_dump(), **update})
    return config.model_copy(update={"training": training})


def with_settings(state: dict[str, Any], config: PipelineConfig) -> TransferRecommender:
    """A model from its state with this run's training settings (fine-tuning may use other ones than pretraining)."""
    return TransferRecommender.from_state({**state, "config": model_config(config).__dict__})


def load_pretrained(checkpoint: str, config: PipelineConfig) -> TransferRecommender:
    """The pretrained model, with this run's training settings."""
    return with_settings(torch.load(checkpoint, map_location="cpu", weights_only=True), config)


def fit_target(features: dict[str, Any], target: str, config: PipelineConfig,
               pretrained: TransferRecommender | None, checkpoint: Path | None = None,
               ) -> tuple[TransferRecommender, list[dict[str, Any]], PlatformData]:
    """Fine-tune a copy of the pretrained model, or train on the target alone when there is none.

    With `checkpoint`, progress is saved there after every epoch and a rerun resumes from it (see
    TransferRecommender.finetune); the file is removed once the fine-tune has finished.
    """
    data = PlatformData(Path(features["dir"]), target, features["n_items"])
    if pretrained is not None:
        model = TransferRecommender.from_state(pretrained.state())
    else:
        model = TransferRecommender(features["n_items"], model_config(config))
    history = model.finetune(train_history(data, config), data.matrix("valid"), data.item_mask(), log=_log_epoch,
                             checkpoint=checkpoint)
    return model, history, data


def bundle_for(model: TransferRecommender, features: dict[str, Any], data: PlatformData, splits: tuple[str, ...],
               meta: dict[str, Any]) -> ModelBundle:
    import pandas as pd

    items = pd.read_parquet(Path(features["dir"]) / "items.parquet").sort_values("item_idx")
    known = data.frame[data.frame["split"].isin(splits)][["user_id", "item_id"]]
    return ModelBundle(model, items["item_id"].to_numpy(), data.item_mask(), known, meta, data.profiles())


def finetune(target: str, features: dict[str, Any], pretrained: dict[str, Any], config: PipelineConfig,
             layout: StateLayout, run_key: str, parent_run_id: str) -> dict[str, Any]:
    """Fine-tune the pretrained model on one target; log it to MLflow as a pyfunc model (the candidate)."""
    from tasks.serving import SIGNATURE, TransferRecModel, input_example

    started = time.perf_counter()
    with tracking.stage_run(layout, run_key, f"finetune {target}", parent_run_id, {"platform": target}) as run:
        mlflow.log_params({"platform": target, "pretrain_run_id": pretrained["run_id"],
                           **model_config(config).__dict__})
        # a retried task (worker killed, node lost) resumes from the last finished epoch instead of starting over
        checkpoint = layout.models / run_key / f"{target}.finetune.ckpt"
        model, history, data = fit_target(features, target, config,
                                          load_pretrained(pretrained["checkpoint"], config), checkpoint)
        tracking.log_epochs(history)
        from tasks.sideparts import fit_side_parts

        side = fit_side_parts(model, features, config, target, with_source=True,
                              cache_dir=layout.root / "cache" / "embeddings")
        mlflow.log_dict(side, "side_parts.json")
        tuned = [e for e in history if e["stage"] == "finetune"]
        best = max(tuned, key=lambda e: e["valid_ndcg"]) if tuned else {"epoch": 0}
        blend = next(e for e in reversed(history) if e["stage"] == "blend")
        mlflow.log_metrics({"valid_ndcg": model.valid_ndcg, "best_epoch": best["epoch"], "beta": blend["beta"],
                            "kernel_weight": model.kernel_weight, "fit_seconds": time.perf_counter() - started})
        bundle = bundle_for(model, features, data, ("train", "valid"),
                            {"target": target, "run_key": run_key, "features": features["dir"]})
        folder = bundle.save(layout.models / run_key / target / "candidate")
        info = mlflow.pyfunc.log_model(name="model", python_model=TransferRecModel(),
                                       artifacts={"bundle": str(folder)}, signature=SIGNATURE,
                                       input_example=input_example(bundle),
                                       code_paths=[str(Path(__file__).resolve().parent)])
    log.info("fine-tuned %s: best epoch %d, blend beta %.2f, kernel weight %.2f, valid NDCG@%d %.4f; MLflow run %s",
             target, best["epoch"], blend["beta"], model.kernel_weight, config.evaluation.k, model.valid_ndcg,
             run.info.run_id)
    return {"target": target, "bundle": str(folder), "run_id": run.info.run_id, "model_uri": info.model_uri,
            "valid_ndcg": model.valid_ndcg, "epochs": len(tuned)}
