"""The linked part of a target's model (recommender/linked.py) from this run's features: people's rows joined by link
id, its settings chosen on the target's data (selection/linked.py), and whether it also answers the target's warm
users, chosen on valid against the model it sits in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from transfer_rec.manifests import FeatureSet
from transfer_rec.recommender.content import CONTENT_PARTS, content_vectors
from transfer_rec.recommender.linked import LinkedPart, LinkedRecommender, binary, rows_by_link
from transfer_rec.selection.linked import choose, ndcg_of
from transfer_rec.stages.features import PlatformData

log = logging.getLogger(__name__)


@dataclass
class LinkedFit:
    """What the train stage keeps of the linked part: the part (None when nothing links the target to a source),
    the accounts a request may name its people by, and what was chosen and measured (MLflow params and metrics)."""

    part: LinkedPart | None
    accounts: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def _accounts(platform: str, data: PlatformData) -> pd.DataFrame:
    links = data.link_ids()
    keep = np.array([link is not None for link in links], dtype=bool)
    return pd.DataFrame({"platform": platform, "user_id": data.user_ids[keep], "link_id": links[keep].astype(str)})


def source_content(
    features: FeatureSet, columns: dict[str, np.ndarray], cache_dir: Path | None
) -> dict[str, np.ndarray] | None:
    """Per source, its items' content vectors (genres, year, title embedding) in its column order; None when the
    features hold no item descriptions."""
    table = Path(features.dir) / "items.parquet"
    if not table.exists() or not columns:
        return None
    items = pd.read_parquet(table)
    wanted = np.unique(np.concatenate(list(columns.values())))
    subset = items[items["item_idx"].isin(wanted)]
    if "title" not in subset or subset["title"].isna().all():
        return None
    vectors = content_vectors(subset, CONTENT_PARTS, cache_dir)  # rows in item_idx order
    row = pd.Series(np.arange(len(subset)), index=np.sort(subset["item_idx"].to_numpy()))
    return {name: vectors[row[cols].to_numpy()] for name, cols in columns.items()}


def fit_linked(
    features: FeatureSet,
    target: PlatformData,
    target_name: str,
    sources: list[str],
    k: int,
    seed: int,
    base_scores: Callable[[np.ndarray], np.ndarray],
    max_items: int | None = None,
    cache_dir: Path | None = None,
) -> LinkedFit:
    """The linked part for one target. `base_scores(rows)`: the rest of the model's scores (over the unified items)
    for those target rows from their train history, the bar the part must clear to answer warm users."""
    empty = pd.DataFrame(columns=["platform", "user_id", "link_id"])
    target_links = target.link_ids()
    if all(link is None for link in target_links):
        return LinkedFit(None, empty, reason="the target's users carry no link id")
    datas = {name: PlatformData.of(features, name) for name in sources}
    accounts = {name: _accounts(name, d) for name, d in datas.items()}
    accounts = {name: a for name, a in accounts.items() if len(a)}
    on_target = {link for link in target_links if link is not None}
    if not any(a["link_id"].isin(on_target).any() for a in accounts.values()):
        return LinkedFit(None, empty, reason="no target user is linked to a source account")

    # people: everyone linked on a kept source; rows for fitting: the target's users first (aligned with its
    # matrices), then people known on a source only (their source items still inform the joint item space)
    people = np.array(sorted(set().union(*(set(a["link_id"]) for a in accounts.values()))), dtype=object)
    person_row = pd.Series(np.arange(len(people)), index=people)
    target_columns = np.flatnonzero(target.item_mask())
    columns, histories = {}, {}
    for name, a in accounts.items():
        d = datas[name]
        columns[name] = np.flatnonzero(d.item_mask())
        user_rows = d._row[a["user_id"]].to_numpy()
        picked = binary(d.matrix()[user_rows][:, columns[name]]).tocoo()
        rows = person_row[a["link_id"].to_numpy()].to_numpy()[picked.row]
        histories[name] = sp.csr_matrix(
            (np.ones(len(rows)), (rows, picked.col)), shape=(len(people), len(columns[name]))
        )
    joint = len(target_columns) + sum(len(c) for c in columns.values())
    if max_items is not None and joint > max_items:
        return LinkedFit(
            None,
            empty,
            reason=f"the sources' and the target's items together ({joint:,}) exceed training.linked_max_items "
            f"({max_items:,}): the part's dense solve would need ~{joint**2 * 8 / 2**30:.1f} GiB per copy",
        )
    only_source = [link for link in people.tolist() if link not in on_target]
    source_rows = rows_by_link(histories, person_row.to_dict(), list(target_links) + only_source)

    def target_rows(*splits: str) -> sp.csr_matrix:
        m = binary(target.matrix(*splits)[:, target_columns])
        return sp.vstack([m, sp.csr_matrix((len(only_source), len(target_columns)))], format="csr")

    train, valid = target_rows("train"), target_rows("valid")
    # what the sources' items are about: a second bridge between catalogues that share no item
    vectors = source_content(features, columns, cache_dir)
    choice = choose(source_rows, train, valid, k=k, seed=seed, vectors=vectors)
    model = LinkedRecommender(choice.settings, vectors).fit(source_rows, train, known=train + valid)
    part = LinkedPart(model, target_name, target_columns, columns, people, histories)

    # warm users: the part answers them only if it beats the rest of the model on valid, on the warm users it would
    # answer (people with a target history and a history on a kept warm source)
    n = len(target_links)
    on_warm = np.zeros(n, dtype=bool)
    for name, w in choice.settings.warm_sources.items():
        if w > 0:
            on_warm |= np.diff(source_rows[name].indptr)[:n] > 0
    judges = np.flatnonzero(on_warm & (np.diff(train.indptr)[:n] > 0) & (np.diff(valid.indptr)[:n] > 0))
    metrics: dict[str, float] = {}
    if len(judges):
        sub = {name: m[judges] for name, m in source_rows.items()}
        linked = ndcg_of(model.score_warm(sub, train[judges]), valid[judges], train[judges], k)
        base = ndcg_of(base_scores(judges)[:, target_columns], valid[judges], train[judges], k)
        part.warm = linked > base
        metrics = {"linked.warm_valid_ndcg": linked, "linked.base_valid_ndcg": base}
    new_trials = [t["ndcg"] for t in choice.trials if t["part"] == "new"]
    if new_trials:
        metrics["linked.new_simulated_ndcg"] = max(new_trials)
    known = set(people.tolist())
    params = {
        **{f"linked.{key}": value for key, value in choice.summary().items()},
        "linked.answers_warm": part.warm,
        "linked.people": len(people),
        "linked.target_users_linked": sum(link in known for link in target_links if link is not None),
    }
    log.info(
        "linked part for %s: %d people on the sources, %d of the target's users linked; newcomers from %s, warm "
        "users %s",
        target_name,
        len(people),
        params["linked.target_users_linked"],
        [s for s, w in choice.settings.new_sources.items() if w > 0] or "no source",
        "answered by it" if part.warm else "left to the rest of the model",
    )
    # the accounts a request may name: the target's linked users and every kept source's
    all_accounts = pd.concat([_accounts(target_name, target), *accounts.values()], ignore_index=True)
    return LinkedFit(part, all_accounts, params, metrics)
