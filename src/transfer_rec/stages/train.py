"""Stages 5 and 6: pretrain the recommender on the source platforms, fine-tune it on each target platform, and fit the
baselines it is judged against on the same split."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from transfer_rec.config import PipelineConfig, TrainingConfig
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import Candidate, FeatureSet, Pretrained, PretrainedFamily
from transfer_rec.metrics.ranking import candidate_ndcg, judges
from transfer_rec.recommender.baselines import Baselines
from transfer_rec.recommender.ease import EASE
from transfer_rec.recommender.popularity import Popularity
from transfer_rec.recommender.transfer import TransferRecommender
from transfer_rec.registry import models as registry
from transfer_rec.registry import tracking
from transfer_rec.runtime.threads import use_torch_threads
from transfer_rec.selection.short_history import ShortHistoryData, fit_short_history, ordered_items
from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.stages.features import PlatformData, disliked, interaction_weights
from transfer_rec.stages.linked import LinkedFit, fit_linked

log = logging.getLogger(__name__)

EASE_L2_GRID = (100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)


def new_model(n_items: int, config: PipelineConfig) -> TransferRecommender:
    """An untrained recommender with the config's training settings."""
    return TransferRecommender(n_items, config.training, config.evaluation.k, config.runtime.device)


def train_history(data: PlatformData, config: PipelineConfig) -> sp.csr_matrix:
    """A platform's train interactions as the model takes histories: rating-weighted when so configured."""
    return data.matrix("train", rating_weight=config.training.rating_weight)


def _log_epoch(entry: dict[str, Any]) -> None:
    log.info(
        "%s epoch %d: %s",
        entry["stage"],
        entry["epoch"],
        ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if isinstance(v, float)),
    )


def _model_params(config: PipelineConfig) -> dict[str, Any]:
    return {**config.training.model_dump(), "k": config.evaluation.k}


def pretrain(
    features: FeatureSet,
    config: PipelineConfig,
    layout: StateLayout,
    run_key: str,
    parent_run_id: str,
    targets: list[str] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> Pretrained:
    """One model per family of sources (the targets that learn from the same sources share it), each trained on its
    sources' interactions and saved under models/<run_key>/; `targets` default to every target of the config.
    `on_run` is told each family's MLflow run id as soon as it exists."""
    use_torch_threads(config.runtime.torch_threads)
    families = config.source_families(targets if targets is not None else [t.name for t in config.targets])
    trained = [
        _pretrain_family(
            features, config, layout, run_key, parent_run_id, list(sources), members, len(families), on_run
        )
        for sources, members in families.items()
    ]
    return Pretrained(families=trained, run_id=trained[0].run_id)


def _pretrain_family(
    features: FeatureSet,
    config: PipelineConfig,
    layout: StateLayout,
    run_key: str,
    parent_run_id: str,
    source_names: list[str],
    targets: list[str],
    n_families: int,
    on_run: Callable[[str], None] | None = None,
) -> PretrainedFamily:
    sources = {name: PlatformData.of(features, name) for name in source_names}
    names = ",".join(sources)
    config = config.model_copy(update={"training": config.pretraining_of(targets)})
    model = new_model(features.n_items, config)
    started = time.perf_counter()
    # one family keeps the plain stage name (one run per pipeline run); several are told apart by their sources
    stage = "pretrain" if n_families == 1 else f"pretrain {'+'.join(sources)}"
    with tracking.stage_run(layout, run_key, stage, parent_run_id, {"platform": names}, on_run) as run:
        mlflow.log_params({"platform": names, "targets": ",".join(targets), **_model_params(config)})
        weight = config.training.rating_weight
        history = model.pretrain({n: d.matrix(rating_weight=weight) for n, d in sources.items()}, log=_log_epoch)
        tracking.log_epochs(history)
        file = "pretrained.pt" if n_families == 1 else f"pretrained-{'+'.join(sources)}.pt"
        checkpoint = layout.models / run_key / file
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state(), checkpoint)
        seconds = time.perf_counter() - started
        mlflow.log_metric("fit_seconds", seconds)
    log.info("pretrained on %s for %s: %d epochs, %.1f s", names, ", ".join(targets), len(history), seconds)
    return PretrainedFamily(
        sources=list(sources),
        targets=targets,
        checkpoint=str(checkpoint),
        run_id=run.info.run_id,
        epochs=len(history),
        users=int(sum(len(d.user_ids) for d in sources.values())),
        seconds=seconds,
    )


def with_training(config: PipelineConfig, **update: Any) -> PipelineConfig:
    """The config with some training settings changed (validated like the config file: a bad value is refused)."""
    training = TrainingConfig.model_validate({**config.training.model_dump(), **update})
    return config.model_copy(update={"training": training})


def with_settings(state: dict[str, Any], config: PipelineConfig) -> TransferRecommender:
    """A model from its state with this run's training settings (fine-tuning may use other ones than pretraining)."""
    return TransferRecommender.from_state(
        {**state, "config": config.training.model_dump(), "k": config.evaluation.k}, config.runtime.device
    )


def load_pretrained(checkpoint: str, config: PipelineConfig) -> TransferRecommender:
    """The pretrained model, with this run's training settings."""
    return with_settings(torch.load(checkpoint, map_location="cpu", weights_only=True), config)


def fit_target(
    features: FeatureSet,
    target: str,
    config: PipelineConfig,
    pretrained: TransferRecommender | None,
    checkpoint: Path | None = None,
) -> tuple[TransferRecommender, list[dict[str, Any]], PlatformData]:
    """Fine-tune a copy of the pretrained model, or train on the target alone when there is none.

    With `checkpoint`, progress is saved there (at most every 30 s of epochs) and a rerun resumes from it (see
    TransferRecommender.finetune); the file is removed once the fine-tune has finished.
    """
    use_torch_threads(config.runtime.torch_threads)
    data = PlatformData.of(features, target)
    if pretrained is not None:
        model = TransferRecommender.from_state(pretrained.state(), config.runtime.device)
    else:
        model = new_model(features.n_items, config)
    history = model.finetune(
        train_history(data, config), data.matrix("valid"), data.item_mask(), log=_log_epoch, checkpoint=checkpoint
    )
    return model, history, data


def short_history_data(features: FeatureSet, target: PlatformData, sources: list[str]) -> ShortHistoryData:
    """What the short-history parts learn from: the target's users and the given source platforms' users."""
    n_items = features.n_items
    train = target.frame[target.frame["split"] == "train"]
    if sources:
        datas = [PlatformData.of(features, name) for name in sources]
        source_matrix = sp.vstack([d.matrix() for d in datas]).tocsr()
        source_users = pd.concat([d.profiles() for d in datas], ignore_index=True)
    else:
        source_matrix = sp.csr_matrix((0, n_items), dtype=np.float32)
        source_users = pd.DataFrame({"user_id": pd.Series(dtype=object)})
    return ShortHistoryData(
        n_items=n_items,
        catalogue=target.item_mask(),
        train=target.matrix("train"),
        valid=target.matrix("valid"),
        users=target.profiles(),
        ordered=ordered_items(train, target.user_ids),
        source=source_matrix,
        source_users=source_users,
        items=pd.read_parquet(Path(features.dir) / "items.parquet"),
    )


def fit_short_history_parts(
    model: TransferRecommender,
    features: FeatureSet,
    target: PlatformData,
    config: PipelineConfig,
    with_source: bool,
    cache_dir: Path | None,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """The short-history parts config `short_history` asks for (selection/short_history.py), learned from the
    target's users and, `with_source`, the source platforms' (`sources`: their names, default the config's)."""
    names = (sources if sources is not None else [p.name for p in config.sources]) if with_source else []
    data = short_history_data(features, target, names)
    return fit_short_history(model, data, config.short_history, with_source, cache_dir, config.training.seed)


def _ease(train: sp.csr_matrix, valid: sp.csr_matrix, candidates: np.ndarray, k: int, judged: np.ndarray) -> EASE:
    """EASE with its L2 strength chosen on the validation split of the `judged` users."""
    best, best_ndcg = None, -1.0
    items = np.flatnonzero(candidates)
    judge_train, judge_valid = train[judged], valid[judged]
    for model in EASE.grid(train, EASE_L2_GRID):
        ndcg = candidate_ndcg(model.score(judge_train)[:, items], judge_train, judge_valid, k, items)
        if ndcg > best_ndcg:
            best, best_ndcg = model, ndcg
        del model  # a loser's items x items weights would otherwise live on while the next one is solved
    assert best is not None
    return best


def fit_baselines(
    features: FeatureSet, target: str, config: PipelineConfig, cache_dir: Path | None = None
) -> Baselines:
    """The contenders, fitted on target train (valid only for their choices): the same model trained on the target
    alone (with short-history parts learned from the target's users alone), EASE and popularity."""
    started = time.perf_counter()
    twin, _, data = fit_target(features, target, config, pretrained=None)
    fit_short_history_parts(twin, features, data, config, with_source=False, cache_dir=cache_dir)
    info: dict[str, Any] = {"target_only_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    train = data.matrix("train")
    valid = data.matrix("valid")
    judged = judges(valid, config.training.valid_users_max, config.training.seed)
    ease = _ease(train, valid, data.item_mask(), config.evaluation.k, judged)
    info.update(ease_seconds=time.perf_counter() - started, ease_l2=ease.l2)
    return Baselines(twin, ease, Popularity().fit(train), info)


def bundle_for(
    model: TransferRecommender,
    features: FeatureSet,
    data: PlatformData,
    splits: tuple[str, ...],
    meta: dict[str, Any],
    linked: LinkedFit | None = None,
) -> ModelBundle:
    """The served model: `model` with the target's items, and its known users' histories from `splits`, each item
    counting as in training (meta `rating_weight`), and the items they rated low (never recommended back)."""
    items = pd.read_parquet(Path(features.dir) / "items.parquet").sort_values("item_idx")
    rows = data.frame[data.frame["split"].isin(splits)]
    seen_low = disliked(features.unified, str(meta["target"]), rows["user_id"].unique().tolist())
    known = rows[["user_id", "item_id"]].assign(weight=interaction_weights(rows, float(meta.get("rating_weight", 0))))
    part, accounts = (linked.part, linked.accounts) if linked is not None and linked.part is not None else (None, None)
    return ModelBundle(
        model,
        items["item_id"].to_numpy(),
        data.item_mask(),
        known,
        meta,
        data.profiles(),
        part,
        accounts,
        native_item_ids(features, str(meta["target"]), items["item_id"]),
        seen_low,
    )


def native_item_ids(features: FeatureSet, platform: str, item_ids: pd.Series) -> np.ndarray | None:
    """The platform's own id of each item (None for items it does not have), from the unified version's item id
    table; None when that version predates the table."""
    table = Path(features.unified or "") / "item_ids.parquet"
    if features.unified is None or not table.exists():
        return None
    ids = pd.read_parquet(table)
    own = ids[ids["platform"] == platform].set_index("item_id")["native_id"]
    return own.reindex(item_ids.to_numpy()).astype(object).where(lambda v: v.notna(), None).to_numpy()


def fit_linked_part(
    model: TransferRecommender,
    features: FeatureSet,
    data: PlatformData,
    target: str,
    config: PipelineConfig,
    cache_dir: Path | None = None,
) -> LinkedFit:
    """The linked part (stages/linked.py) next to the fine-tuned model, which is the bar it must clear for warm
    users."""
    profiles = data.profiles()
    weighted = train_history(data, config)

    def base_scores(rows: np.ndarray) -> np.ndarray:
        return model.score(weighted[rows], profiles.iloc[rows].reset_index(drop=True))

    return fit_linked(
        features,
        data,
        target,
        [p.name for p in config.sources_of(target)],
        config.evaluation.k,
        config.training.seed,
        base_scores,
        config.training.linked_max_items,
        cache_dir,
    )


def finetune(
    target: str,
    features: FeatureSet,
    pretrained: Pretrained,
    config: PipelineConfig,
    layout: StateLayout,
    run_key: str,
    parent_run_id: str,
    on_run: Callable[[str], None] | None = None,
) -> Candidate:
    """Fine-tune the pretrained model on one target; log it to MLflow as a pyfunc model (the candidate). The
    baselines are fitted on the same split and saved beside it for evaluation. `on_run` is told the MLflow run's id
    as soon as it exists (the DAG links a failed fine-tune's task to it)."""
    started = time.perf_counter()
    config = config.for_target(target)
    cache_dir = layout.root / "cache" / "embeddings"
    with tracking.stage_run(layout, run_key, f"finetune {target}", parent_run_id, {"platform": target}, on_run) as run:
        family = pretrained.of(target)
        mlflow.log_params({"platform": target, "pretrain_run_id": family.run_id, **_model_params(config)})
        # a retried task (worker killed, node lost) resumes from the last finished epoch instead of starting over
        checkpoint = layout.models / run_key / f"{target}.finetune.ckpt"
        model, history, data = fit_target(
            features, target, config, load_pretrained(family.checkpoint, config), checkpoint
        )
        tracking.log_epochs(history)
        # the sources the item-item part kept (a source that does not help this target gets no weight) also teach
        # the short-history parts
        used = [name for name, weight in model.source_weights.items() if weight > 0]
        mlflow.log_params({f"source_weight.{name}": weight for name, weight in model.source_weights.items()})
        chosen = fit_short_history_parts(
            model, features, data, config, with_source=bool(used), cache_dir=cache_dir, sources=used
        )
        mlflow.log_dict(chosen, "short_history_parts.json")
        linked = fit_linked_part(model, features, data, target, config, cache_dir)
        mlflow.log_params(linked.params if linked.part is not None else {"linked": linked.reason})
        mlflow.log_metrics({name: tracking.readable(value) for name, value in linked.metrics.items()})
        tuned = [e for e in history if e["stage"] == "finetune"]
        best = max(tuned, key=lambda e: e["valid_ndcg"]) if tuned else {"epoch": 0}
        blend = next(e for e in reversed(history) if e["stage"] == "blend")
        # what fine-tuning chose is a setting of this model (a param); what it scored, a metric
        mlflow.log_params(
            {
                "chosen.best_epoch": best["epoch"],
                "chosen.blend_beta": blend["beta"],
                "chosen.kernel_weight": model.kernel_weight,
                # the item-item part: the mean of this many settings' weights (item_combine mean), or the one
                # setting solved (item_combine best: the grid point valid chose, not always the configured one)
                "chosen.item_settings_averaged": model.item_combined,
                **(
                    {
                        "chosen.item_alpha": model.item_params[0],
                        "chosen.item_lam": model.item_params[1],
                        "chosen.item_drop_p": model.item_params[2],
                    }
                    if model.item_combined == 1
                    else {}
                ),
                "chosen.kernel_lam": model.kernel.lam if model.kernel is not None else None,
            }
        )
        mlflow.log_metrics(
            {
                "valid_ndcg": tracking.readable(model.valid_ndcg),
                "fit_seconds": tracking.readable(time.perf_counter() - started),
            }
        )
        # the served model knows each user by their whole history, as publish ranks them (evaluation scores its own
        # split matrices, never these): a request naming a known user never gets back an item of their test split
        bundle = bundle_for(
            model,
            features,
            data,
            ("train", "valid", "test"),
            {
                "target": target,
                "run_key": run_key,
                "features": features.dir,
                "rating_weight": config.training.rating_weight,
            },
            linked,
        )
        folder = bundle.save(layout.models / run_key / target / "candidate")
        model_uri = registry.log_candidate_model(bundle, folder, layout.root / "cache" / "model-code")
        baselines = fit_baselines(features, target, config, cache_dir)
        baselines_dir = baselines.save(layout.models / run_key / target / "baselines")
        mlflow.log_params({"baseline.ease_l2": baselines.ease.l2})
    log.info(
        "fine-tuned %s: sources %s, best epoch %d, blend beta %.2f, kernel weight %.2f, valid NDCG@%d %.4f; "
        "MLflow run %s",
        target,
        ", ".join(f"{name} {weight:g}" for name, weight in model.source_weights.items()),
        best["epoch"],
        blend["beta"],
        model.kernel_weight,
        config.evaluation.k,
        model.valid_ndcg,
        run.info.run_id,
    )
    return Candidate(
        target=target,
        bundle=str(folder),
        baselines=str(baselines_dir),
        run_id=run.info.run_id,
        model_uri=model_uri,
        valid_ndcg=model.valid_ndcg,
        epochs=len(tuned),
    )
