"""Stage 7, evaluate: the candidate, the current champion and the baselines on the same held-out target users."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp

from transfer_rec.config import PipelineConfig
from transfer_rec.io.state import StateLayout, refuse_superseded
from transfer_rec.manifests import Candidate, Evaluation, FeatureSet
from transfer_rec.metrics import plots
from transfer_rec.metrics.beyond import catalogue_coverage, genre_matrix, intra_list_diversity, item_popularity, novelty
from transfer_rec.metrics.ranking import (
    METRICS,
    evaluate_scores,
    item_segment_hits,
    judges,
    mean_metrics,
    per_user_metrics,
    top_k,
)
from transfer_rec.metrics.segments import (
    NEW_TO_TARGET,
    linked_segments,
    segment_table,
    time_holdout,
    user_segments,
)
from transfer_rec.metrics.uncertainty import bootstrap_ci, paired_lower_bound
from transfer_rec.recommender.baselines import Baselines
from transfer_rec.registry import tracking
from transfer_rec.registry.models import ChampionUnloadable, champion_bundle
from transfer_rec.runtime.threads import use_torch_threads
from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.serving.withheld import Withheld
from transfer_rec.stages.features import PlatformData, sources_linked

log = logging.getLogger(__name__)

# A fitted contender: (history rows, the same rows' positions among the platform's users) -> scores over the items.
# The positions let a contender that reads profiles or links take those of the users it is asked for.
Scorer = Callable[[sp.csr_matrix, np.ndarray], np.ndarray]

# Contenders are scored this many users at a time and only their top-K lists are kept: a contender's scores for every
# user at once are users x items in float64 (2.9 GB at 20,000 users and 18,000 items), and the transfer model makes
# several such arrays on the way (its parts' scores, their z-scores, the blend).
SCORE_ROWS = 2048


def ranked_rows(
    score: Scorer,
    history: sp.csr_matrix,
    rows: np.ndarray,
    k: int,
    exclude: sp.csr_matrix,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """The top-k lists (item indices, best first) of the users at `rows`, scored from their `history` rows with
    their `exclude` items and non-candidates left out; a row of the result per entry of `rows`. A list with fewer
    than k items the model can rank ends in -1 (an empty place): an item it scores -inf (a champion that does not
    know an item of this catalogue) or an excluded one is never listed, so never credited, as serving never shows
    it."""
    history, exclude, rows = sp.csr_matrix(history), sp.csr_matrix(exclude), np.asarray(rows, dtype=np.int64)
    ranked = np.empty((len(rows), min(k, history.shape[1])), dtype=np.intp)
    for start in range(0, len(rows), SCORE_ROWS):
        block = rows[start : start + SCORE_ROWS]
        ranked[start : start + len(block)] = top_k(
            score(history[block], block), k, exclude[block], candidates, fill=False
        )
    return ranked


def rows_metrics(
    score: Scorer,
    history: sp.csr_matrix,
    exclude: sp.csr_matrix,
    relevant: sp.csr_matrix,
    k: int,
    candidates: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metrics of the users with a relevant item (as `evaluate_scores`), scored a block at a time."""
    relevant = sp.csr_matrix(relevant)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    return per_user_metrics(ranked_rows(score, history, users, k, exclude, candidates), relevant[users], k)


def same_recommendations(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two contenders' top-k lists (top_k of their scores, a row per user) are the same, in the same order."""
    return a.shape == b.shape and bool(np.array_equal(a, b))


def baseline_scorers(baselines: Baselines, profiles: pd.DataFrame) -> dict[str, Scorer]:
    """The baselines fitted by the train stage, each as a function from a history matrix to scores (the target-only
    twin reads each user's profile next to the history, as the candidate does)."""
    return {
        "target_only": lambda m, rows: baselines.target_only.score(m, _rows_of(profiles, rows)),
        "ease": lambda m, rows: baselines.ease.score(m),
        "popularity": lambda m, rows: baselines.popularity.score(m),
    }


def _rows_of(profiles: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return profiles.iloc[rows].reset_index(drop=True)


def held_out_metrics(data: PlatformData, scores: dict[str, np.ndarray], k: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-user test metrics of every contender: train and valid items masked, target items only."""
    seen, test, candidates = data.matrix("train", "valid"), data.matrix("test"), data.item_mask()
    return {name: evaluate_scores(s, seen, test, k, candidates) for name, s in scores.items()}


# item segments by the item's interactions in the target's train split: [low, high) bounds
ITEM_TRAIN_BUCKETS = ((0, 5), (5, 20), (20, None))


def item_segments(source: sp.csr_matrix, target_train: sp.csr_matrix, candidates: np.ndarray) -> dict[str, np.ndarray]:
    """The target's items the source never saw, and the target's items by how often they occur in its train split."""
    in_source = np.asarray((source != 0).sum(axis=0)).ravel() > 0
    counts = np.asarray((target_train != 0).sum(axis=0)).ravel()
    segments = {"not on the source": candidates & ~in_source}
    for low, high in ITEM_TRAIN_BUCKETS:
        name = f"target train {low}-{high - 1}" if high else f"target train {low}+"
        segments[name] = candidates & (counts >= low) & (counts < (high or np.inf))
    return segments


def held_out_item_segments(
    data: PlatformData, source: sp.csr_matrix, scores: dict[str, np.ndarray], k: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per contender and item segment: the test interactions in it and the share found in the user's top-k."""
    users = _test_users(data)
    seen, test, candidates = data.matrix("train", "valid"), data.matrix("test"), data.item_mask()
    segments = item_segments(source, data.matrix("train"), candidates)
    return {
        name: item_segment_hits(top_k(s[users], k, seen[users], candidates, fill=False), test[users], segments)
        for name, s in scores.items()
    }


def _test_users(data: PlatformData) -> np.ndarray:
    return np.flatnonzero(np.diff(data.matrix("test").indptr) > 0)


def beyond_accuracy(
    data: PlatformData, ranked: dict[str, np.ndarray], genres: np.ndarray
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Per-user diversity and novelty, and catalogue coverage, of each contender's top-K lists for the test users
    (`ranked`: the same lists the accuracy metrics judge)."""
    popularity = item_popularity(data.matrix("train"))
    per_user, coverage = {}, {}
    for name, lists in ranked.items():
        per_user[name] = {"diversity": intra_list_diversity(lists, genres), "novelty": novelty(lists, popularity)}
        coverage[name] = catalogue_coverage(lists, data.item_mask())
    return per_user, coverage


def time_holdout_split(
    data: PlatformData, share: float, rating_weight: float = 0.0
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The next-period hold-out of retention: (history, exclude, relevant) matrices over the target's users.

    Per user, the last `share` of interactions by timestamp are the later period, the rest is the history the models
    get as input (rating-weighted with `rating_weight`, as PlatformData.matrix). Relevant are the later interactions
    outside the train split, so no contender of this run was fitted on them; later train-split interactions are
    masked (neither input nor credit), as is the history."""
    late = time_holdout(data.frame, share).to_numpy()
    relevant = late & (data.frame["split"] != "train").to_numpy()
    return data.rows_matrix(~late, rating_weight), data.rows_matrix(~relevant), data.rows_matrix(relevant)


def retention_metrics(
    data: PlatformData,
    scorers: dict[str, Scorer],
    k: int,
    share: float,
    rating_weights: dict[str, float] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Per-user metrics on the next-period hold-out (retention = hit) for every contender, and the history length
    and row of each evaluated user. Each contender reads the history as on the test split: rating-weighted with its
    `rating_weights` entry (binary without one)."""
    history, exclude, relevant = time_holdout_split(data, share)
    weights = rating_weights or {}
    read = {w: time_holdout_split(data, share, w)[0] for w in set(weights.values()) if w}
    per_user = {}
    for name, score in scorers.items():
        given = read.get(weights.get(name, 0.0), history)
        per_user[name] = {"retention": rows_metrics(score, given, exclude, relevant, k, data.item_mask())["hit"]}
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    return per_user, np.diff(history.indptr)[users], users


COLD_START_LENGTHS = (0, 1, 3, 5, 10)


def cold_start_curve(
    data: PlatformData,
    scorers: dict[str, Scorer],
    k: int,
    samples: int,
    lengths: tuple[int, ...] = COLD_START_LENGTHS,
    users_max: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """NDCG@k against history length: each test user (a seeded sample of `users_max` of them past it) with at least n
    train items seen as a new user with only their n earliest ones (n = 0: the profile alone, every test user),
    ranked for their test items; their other train and valid items are masked (neither input nor credit). A user
    with fewer than n train items is not counted at n (with all of theirs, they would be a shorter history counted
    as a longer one; a user new to the target, none at all), and an n no test user reaches has no row. One row per
    (n, contender) with its users, the mean and a 95% bootstrap CI; the contenders of one n are judged on the same
    users."""
    train = data.frame[data.frame["split"] == "train"].sort_values(["user_id", "timestamp", "item_idx"], kind="stable")
    rank = train.groupby("user_id", sort=False).cumcount().to_numpy()
    rows_of = data._row[train["user_id"]].to_numpy()
    exclude, test = data.matrix("train", "valid"), data.matrix("test")
    if users_max is not None:
        # the users left out keep no test item: rows_metrics scores only users with one
        kept = np.zeros(test.shape[0])
        kept[judges(test, users_max, seed)] = 1.0
        test = sp.csr_matrix(sp.diags(kept) @ test)
        test.eliminate_zeros()
    train_items = np.bincount(rows_of, minlength=len(data.user_ids))
    out = []
    for n in lengths:
        first = rank < n
        history = sp.csr_matrix(
            (np.ones(int(first.sum()), dtype=np.float32), (rows_of[first], train["item_idx"].to_numpy()[first])),
            shape=(len(data.user_ids), data.n_items),
        )
        # rows_metrics scores only users with a test item: those with fewer than n train items keep none here
        judged = sp.csr_matrix(sp.diags((train_items >= n).astype(np.float64)) @ test)
        judged.eliminate_zeros()
        if not judged.nnz:  # no test user has n train items: no point, rather than a mean of nobody
            continue
        for name, score in scorers.items():
            ndcg = rows_metrics(score, history, exclude, judged, k, data.item_mask())["ndcg"]
            low, high = bootstrap_ci(ndcg, samples, 0, 0.95)
            out.append(
                {
                    "history_length": n,
                    "contender": name,
                    "users": int(len(ndcg)),
                    "ndcg": float(ndcg.mean()),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return out


class Withdrawn:
    """Who may no longer be answered for, by the unified version at `unified`: accounts whose people withheld
    consent, and accounts gone from a platform's users file (an account deleted on the platform: erased, not just
    inactive). Only platforms whose users file lists every account count for the latter: one without a users file
    lists nobody, and one set to `users_export: partial` only some (the unified version names those)."""

    def __init__(self, unified: Path | str | None) -> None:
        users = Path(unified or "") / "users.parquet"
        table = (
            pd.read_parquet(users, columns=["platform", "user_id", "consent"])
            if unified is not None and users.exists()
            else pd.DataFrame(columns=["platform", "user_id", "consent"])
        )
        manifest = Path(unified or "") / "manifest.json"
        partial = set(json.loads(manifest.read_text()).get("partial_users", [])) if manifest.is_file() else set()
        refused = table.loc[~table["consent"].astype(bool)]
        self.refused = set(zip(refused["platform"], refused["user_id"]))
        self.present = set(zip(table["platform"], table["user_id"]))
        self.listing = set(table["platform"]) - partial

    def __contains__(self, account: tuple[str, str]) -> bool:
        return account in self.refused or (account[0] in self.listing and account not in self.present)


def withheld_of(champion: ModelBundle, unified: Path | str | None) -> Withheld:
    """The accounts the champion holds (a target history, or an account its linked part may be asked for) whose
    people withheld consent, or that were deleted from their platform, by the unified version at `unified`
    (unification left them out, the champion still has them), and the link ids under which it holds such an account
    (their other-platform histories must not answer for them any more)."""
    gone = Withdrawn(unified)
    if not gone.listing and not gone.refused:
        return Withheld()
    accounts = champion.accounts
    held = set(zip(accounts["platform"], accounts["user_id"]))
    held |= {(champion.target, user) for user in champion.histories}
    held |= {(champion.target, user) for user in champion.profiles.index}
    mask = [pair in gone for pair in zip(accounts["platform"], accounts["user_id"])]
    links = set(accounts.loc[mask, "link_id"].dropna()) if len(accounts) else set()
    return Withheld(frozenset(account for account in held if account in gone), frozenset(links))


def withdrawn_accounts(champion: ModelBundle, unified: Path | str | None) -> int:
    """How many accounts of withheld people the champion holds (withheld_of)."""
    return len(withheld_of(champion, unified).accounts)


def withdrawn_links(champion: ModelBundle, unified: Path | str | None) -> set[str]:
    """The link ids under which the champion holds an account of a withheld person (withheld_of)."""
    return set(withheld_of(champion, unified).links)


def _champion_scorer(
    champion: ModelBundle, item_ids: np.ndarray, profiles: pd.DataFrame, links: list[str | None]
) -> Scorer:
    """The champion as it was scored when it was promoted: the same people as the candidate, and a history matrix
    weighted as it was trained (`champion_rating_weight`), re-indexed onto its own items."""
    return lambda matrix, rows: champion.score_aligned(
        matrix, item_ids, _rows_of(profiles, rows), _links_of(links, rows)
    )


def champion_rating_weight(champion: ModelBundle, config: PipelineConfig) -> float:
    """The rating weight the champion was trained with; for one from before bundles recorded it, the config's (what
    it was evaluated with when it was promoted)."""
    return float(champion.meta.get("rating_weight", config.training.rating_weight))


def _links_of(links: list[str | None], rows: np.ndarray) -> list[str | None]:
    return [links[row] for row in rows.tolist()]


def _training_curves(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient()
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        for name in ("finetune_loss", "finetune_valid_ndcg")
    }


def _at_k(metric: str, k: int) -> str:
    return metric if metric.startswith("retention") else f"{metric}_at_{k}"


def _metric_name(contender: str, metric: str, k: int) -> str:
    """Named for the person reading the run: the metric first, then whose ("ndcg_at_10.candidate")."""
    return f"{_at_k(metric, k)}.{contender}"


def _segment_key(segment: str) -> str:
    """A segment's name as a metric name part: "new (<=20)" -> "new_le_20", "history >50" -> "history_over_50",
    "new to the target, on 2 sources" -> "new_to_the_target_on_2_sources"."""
    text = segment.replace("<=", " le ").replace(">=", " ge ").replace("<", " under ").replace(">", " over ")
    return "_".join(re.sub(r"[^\w\-]+", " ", text).split())


def evaluate(
    candidate: Candidate, features: FeatureSet, config: PipelineConfig, layout: StateLayout, run_key: str
) -> Evaluation:
    """Every contender on the same held-out users: accuracy and beyond-accuracy on the random test split, retention on
    the next-period hold-out, each overall and per user segment with bootstrap CIs; logged to an evaluation run
    nested under the candidate's run. The whole report is written to reports/<run_key>/<target>/evaluation.json; the
    manifest names it."""
    target = candidate.target
    refuse_superseded(features.unified, layout.unified / "current", f"evaluate {target}")
    use_torch_threads(config.runtime.torch_threads)
    k, gate = config.evaluation.k, config.gate
    new_max = config.evaluation.new_user_max_history
    data = PlatformData.of(features, target)
    train = data.matrix("train")
    bundle = ModelBundle.load(Path(candidate.bundle))
    # Every contender that has a profile prior reads each user's profile next to the history, as when served.
    profiles = data.profiles()
    # the same rows' people for the linked part, if the model has one (a person known on a source)
    links = list(data.link_ids())
    scorers: dict[str, Scorer] = {
        "candidate": lambda m, rows: bundle.score_rows(m, _rows_of(profiles, rows), _links_of(links, rows))[0]
    }
    baselines = Baselines.load(Path(candidate.baselines))
    scorers.update(baseline_scorers(baselines, profiles))
    l2 = baselines.ease.l2
    tracking.configure(layout)
    items = pd.read_parquet(Path(features.dir) / "items.parquet").sort_values("item_idx")
    try:
        champion, champion_version = champion_bundle(target)
        unloadable = None
    except ChampionUnloadable as error:
        # judged without it (floors and baselines); the gate then asks an operator, who may promote by override:
        # failing here would block every later candidate behind a model nobody can load
        log.error("%s: %s; the candidate is compared with the baselines only", target, error)
        champion, champion_version, unloadable = None, error.version, error.reason
    withheld = Withheld()
    if champion is not None:
        scorers["champion"] = _champion_scorer(champion, items["item_id"].to_numpy(), profiles, links)
        withheld = withheld_of(champion, features.unified)
    withdrawn = len(withheld.accounts)
    if withdrawn:
        log.warning(
            "%s: champion v%s holds %d account(s) of people who have since withheld consent or were deleted",
            target,
            champion_version,
            withdrawn,
        )
    # The transfer models read rating-weighted histories, each with the weight it was trained with (as publish and
    # serving give them); EASE and popularity the binary one
    rating_weights = {"candidate": config.training.rating_weight, "target_only": config.training.rating_weight}
    if champion is not None:
        rating_weights["champion"] = champion_rating_weight(champion, config)
    histories = {w: data.matrix("train", rating_weight=w) for w in set(rating_weights.values()) if w}
    # Every metric on the test split reads each contender's top-K lists (SCORE_ROWS: scored a block of users at a
    # time; every contender's users x items scores at once ran the 10 M scale fit out of 24 GiB).
    seen, candidates, test = data.matrix("train", "valid"), data.item_mask(), data.matrix("test")
    test_users = _test_users(data)
    every_user = np.arange(len(data.user_ids))
    ranked = {
        name: ranked_rows(
            score,
            histories.get(rating_weights.get(name, 0.0), train),
            every_user,
            k,
            seen,
            candidates,
        )
        for name, score in scorers.items()
    }
    per_user = {name: per_user_metrics(lists[test_users], test[test_users], k) for name, lists in ranked.items()}
    extra, coverage = beyond_accuracy(
        data,
        {name: lists[test_users] for name, lists in ranked.items()},
        genre_matrix(items["genres"].fillna("").to_numpy()),
    )
    for name in per_user:
        per_user[name].update(extra[name])
    kept, kept_lengths, kept_users = retention_metrics(data, scorers, k, config.evaluation.time_holdout, rating_weights)
    curve = cold_start_curve(
        data,
        scorers,
        k,
        gate.bootstrap_samples,
        users_max=config.evaluation.cold_start_users_max,
        seed=config.training.seed,
    )
    test_lengths = np.diff(train.indptr)[test_users]
    test_segments = user_segments(test_lengths, new_max)
    kept_segments = user_segments(kept_lengths, new_max)
    new_label = f"new (<={new_max})"
    # people the target has never seen (every interaction of theirs held out: features.new_users)
    newcomers = test_lengths == 0
    if newcomers.any():
        test_segments[NEW_TO_TARGET] = newcomers
    # where the target's people can be linked: the same segments by how many sources each is linked on
    if any(link is not None for link in links):
        linked = sources_linked(features, data, [p.name for p in config.sources_of(target)])
        test_segments |= linked_segments(linked[test_users], test_segments[new_label], new_label)
        kept_segments |= linked_segments(linked[kept_users], kept_segments[new_label], new_label)
        if newcomers.any():
            test_segments |= {
                name: mask
                for name, mask in linked_segments(linked[test_users], newcomers, NEW_TO_TARGET).items()
                if name.startswith(NEW_TO_TARGET)
            }

    metrics = {}
    for name in per_user:
        new_users = kept[name]["retention"][kept_segments[new_label]]
        metrics[name] = {
            **mean_metrics(per_user[name]),
            "coverage": coverage[name],
            "retention": float(np.mean(kept[name]["retention"])) if kept_lengths.size else 0.0,
            "retention_new": float(np.mean(new_users)) if new_users.size else None,
            "ndcg_new_to_target": float(np.mean(per_user[name]["ndcg"][newcomers])) if newcomers.any() else None,
        }
    accuracy = METRICS + ("diversity", "novelty")
    segments = [
        {"platform": target, "split": "test", **row}
        for row in segment_table(per_user, test_segments, accuracy, gate.bootstrap_samples, 0, 0.95)
    ]
    segments += [
        {"platform": target, "split": "next_period", **row}
        for row in segment_table(kept, kept_segments, ("retention",), gate.bootstrap_samples, 0, 0.95)
    ]
    intervals = {
        name: {
            row["metric"]: (row["ci_low"], row["ci_high"])
            for row in segments
            if row["contender"] == name and row["segment"] == "all"
        }
        for name in per_user
    }
    paired = None
    # the same model as far as anyone can tell: the same top-K, in the same order, for every user (two trainings on
    # the same inputs differ in the last digits of their scores, not in what they recommend)
    same_as_champion = "champion" in ranked and same_recommendations(ranked["candidate"], ranked["champion"])
    if "champion" in per_user:
        paired = {
            "ndcg": paired_lower_bound(
                per_user["candidate"]["ndcg"], per_user["champion"]["ndcg"], gate.bootstrap_samples, 0, gate.confidence
            ),
            "retention": paired_lower_bound(
                kept["candidate"]["retention"],
                kept["champion"]["retention"],
                gate.bootstrap_samples,
                0,
                gate.confidence,
            ),
        }
        # people new to the target are judged on their own too: a model may win overall and lose them
        if newcomers.any():
            paired["ndcg_new_to_target"] = paired_lower_bound(
                per_user["candidate"]["ndcg"][newcomers],
                per_user["champion"]["ndcg"][newcomers],
                gate.bootstrap_samples,
                0,
                gate.confidence,
            )

    report_dir = layout.reports / run_key / target
    report_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        report_dir / "per_user.npz",
        **{f"{n}.{m}": v for n, vals in per_user.items() for m, v in vals.items()},
        **{f"{n}.next_period.{m}": v for n, vals in kept.items() for m, v in vals.items()},
    )
    unified_manifest = _unified_manifest(features)
    report = {
        "target": target,
        "k": k,
        "test_users": int(len(test_lengths)),
        "retention_users": int(len(kept_lengths)),
        "new_to_target_users": int(newcomers.sum()),
        "time_holdout": config.evaluation.time_holdout,
        "new_user_max_history": new_max,
        # the candidate's sources and whether its item-item part uses each (1) or left it out as no help (0)
        "source_weights": dict(getattr(bundle.model, "source_weights", {})),
        "linked": bundle.linked.describe() if bundle.linked is not None else None,
        "metrics": metrics,
        "ci": intervals,
        "paired_vs_champion": paired,
        "segments": segments,
        "cold_start_curve": curve,
        "champion_version": champion_version,
        "same_as_champion": same_as_champion,
        "champion_withdrawn": withdrawn,
        # what the champion's server must stop answering from while it serves (promote names it on the champion)
        "champion_withheld": str(withheld.write(report_dir / "withheld.json")) if withheld else None,
        "champion_unloadable": unloadable,
        "ease_l2": l2,
        "data": {"hashes": unified_manifest.get("hashes", {}), "unified": features.unified, "features": features.dir},
        "per_user": str(report_dir / "per_user.npz"),
    }
    (report_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    pd.DataFrame(segments).to_csv(report_dir / "segments.csv", index=False)
    tags = {"platform": target, "candidate_run_id": candidate.run_id}
    with tracking.stage_run(layout, run_key, f"evaluate {target}", candidate.run_id, tags) as run:
        evaluation_run_id = run.info.run_id
        _log_evaluation(metrics, intervals["candidate"], segments, curve, report_dir, target, k)
    with mlflow.start_run(run_id=candidate.run_id):
        # the model's own run keeps the headline (what its registry page shows) and its training record
        mlflow.log_metrics(
            {
                _metric_name("candidate", m, k): tracking.readable(metrics["candidate"][m])
                for m in HEADLINE
                if metrics["candidate"].get(m) is not None
            }
        )
        mlflow.set_tag("evaluation_run_id", evaluation_run_id)
        mlflow.log_figure(
            plots.training_curves(_training_curves(candidate.run_id), f"{target}: fine-tuning curves"),
            "plots/training_curves.png",
        )
        if unified_manifest:
            mlflow.MlflowClient().log_inputs(
                candidate.run_id, datasets=tracking.lineage_inputs(layout.landing, unified_manifest, features.to_xcom())
            )
    for name, values in metrics.items():
        log.info(
            "%s %-12s NDCG@%d %.4f  Recall %.4f  Hit %.4f  MRR %.4f  coverage %.3f  diversity %.3f  novelty %.2f"
            "  retention %.4f (new users %.4f)",
            target,
            name,
            k,
            values["ndcg"],
            values["recall"],
            values["hit"],
            values["mrr"],
            values["coverage"],
            values["diversity"],
            values["novelty"],
            values["retention"],
            values["retention_new"] if values["retention_new"] is not None else float("nan"),
        )
    log.info("%s: %d test users, %d users on the next-period hold-out", target, len(test_lengths), len(kept_lengths))
    return Evaluation(
        target=target,
        k=k,
        test_users=report["test_users"],
        retention_users=report["retention_users"],
        new_to_target_users=report["new_to_target_users"],
        metrics=metrics,
        paired_vs_champion=paired,
        champion_version=champion_version,
        same_as_champion=same_as_champion,
        champion_withdrawn=withdrawn,
        champion_unloadable=unloadable,
        report=str(report_dir / "evaluation.json"),
        candidate=candidate,
        run_id=evaluation_run_id,
    )


# The candidate's metrics its fine-tune run (the model version's source run) repeats from its evaluation run.
HEADLINE = ("ndcg", "recall", "retention", "retention_new")


def interval_metrics(intervals: dict[str, tuple[float | None, float | None]], k: int) -> dict[str, float]:
    """The candidate's CIs as MLflow metrics; a metric nobody could be measured on (no next-period user on a small
    target, say: its CI is (None, None)) has none."""
    out = {}
    for m, (low, high) in intervals.items():
        if low is not None and high is not None:
            name = _metric_name("candidate", m, k)
            out |= {f"{name}.ci_low": tracking.readable(low), f"{name}.ci_high": tracking.readable(high)}
    return out


def _log_evaluation(
    metrics: dict[str, dict[str, float | None]],
    intervals: dict[str, tuple[float, float]],
    segments: list[dict[str, Any]],
    curve: list[dict[str, Any]],
    report_dir: Path,
    target: str,
    k: int,
) -> None:
    """The evaluation run's record: every contender's test metrics, the candidate's CIs and segments, the cold-start
    curve, the report and the plots."""
    for name, values in metrics.items():
        mlflow.log_metrics({_metric_name(name, m, k): tracking.readable(v) for m, v in values.items() if v is not None})
    mlflow.log_metrics(interval_metrics(intervals, k))
    mlflow.log_metrics(
        {
            f"{_at_k(row['metric'], k)}.segment.{_segment_key(row['segment'])}": tracking.readable(row["mean"])
            for row in segments
            if row["contender"] == "candidate" and row["segment"] != "all" and row["users"]
        }
    )
    mlflow.log_metrics(
        {
            f"ndcg_at_{k}.cold_start.history_{row['history_length']}.{row['contender']}": tracking.readable(row["ndcg"])
            for row in curve
        }
    )
    mlflow.log_artifact(str(report_dir / "evaluation.json"))
    mlflow.log_table(pd.DataFrame(segments), "evaluation/segments.json")
    mlflow.log_figure(
        plots.segment_bars(
            segments, ("ndcg", "recall", "retention"), f"{target}: metrics by user segment, 95% bootstrap CIs"
        ),
        "plots/segments.png",
    )
    mlflow.log_figure(
        plots.cold_start_curve(
            curve, f"{target}: NDCG@{k} of test users seen as new users with their n earliest items, 95% bootstrap CIs"
        ),
        "plots/cold_start_curve.png",
    )


def _unified_manifest(features: FeatureSet) -> dict[str, Any]:
    path = Path(features.unified or "") / "manifest.json"
    return json.loads(path.read_text()) if features.unified and path.exists() else {}
