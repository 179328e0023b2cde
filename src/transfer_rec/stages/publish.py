"""Stage 9, publish: the champion's top-K for every user of a target, written atomically as Parquet: the users
training kept, those it left out with too short a history, and opted-out users (a non-personalised list)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from transfer_rec.config import PipelineConfig
from transfer_rec.io.state import StateLayout, superseded
from transfer_rec.io.storage import atomic_dir
from transfer_rec.manifests import FeatureSet, Published
from transfer_rec.registry import tracking
from transfer_rec.registry.models import champion_bundle, registered_model_name
from transfer_rec.schema.unified import PROFILE_FIELDS, user_key
from transfer_rec.serving.bundle import ModelBundle, Recommendations
from transfer_rec.stages.evaluate import withdrawn_links
from transfer_rec.stages.features import PlatformData, disliked, interaction_weights

log = logging.getLogger(__name__)


def publish(target: str, features: FeatureSet, config: PipelineConfig, layout: StateLayout, run_key: str) -> Published:
    """Score every known user of the target with the registry's champion and publish recommendations/<target>/."""
    if features.unified and superseded(Path(features.unified), layout.unified / "current"):
        # an older run's publish cleared and run again: its unified data predates what is current now (a person who
        # has withheld consent since would get a personalised list again), and the newer run has published
        log.warning("%s: this run's unified data is no longer current: nothing published", target)
        return Published(
            target=target,
            published=False,
            reason=f"unified version {features.unified} is no longer current (a later run unified newer data)",
        )
    tracking.configure(layout)
    bundle, version = champion_bundle(target)
    if bundle is None:
        log.warning("%s has no champion yet: nothing published", target)
        return Published(target=target, published=False, reason="no champion in the registry")
    data = PlatformData.of(features, target)
    # each item counting as it did when the champion was trained and evaluated
    rows = data.frame.assign(weight=interaction_weights(data.frame, _rating_weight(bundle)))
    histories = rows.groupby("user_id")["item_id"].agg(list)
    weights = rows.groupby("user_id")["weight"].agg(list).reindex(histories.index)
    # by link id too: a user the linked part answers (linked.answers_warm) is published as evaluated and served;
    # never by the link of a person with an account the champion holds that has since withheld consent
    withdrawn = withdrawn_links(bundle, features.unified)
    recs = bundle.recommend(
        histories.tolist(),
        config.publish.k,
        bundle.known_profiles(histories.index.tolist()),
        link_ids=[_unless(bundle.link_of(target, u), withdrawn) for u in histories.index],
        weights=weights.tolist(),
        excluded=_rated_low(features, target, histories.index.tolist()),
    )
    frame = _ranked_rows(histories.index, recs, [True] * len(histories))
    short = _short_history(bundle, features, target, set(histories.index), config.publish.k, withdrawn)
    frame = pd.concat([frame, short], ignore_index=True) if len(short) else frame
    short_users = int(short["user_id"].nunique()) if len(short) else 0
    opted_out = _opted_out_users(features, target)
    if len(opted_out):
        frame = pd.concat([frame, _non_personalised(data, opted_out, config.publish.k)], ignore_index=True)
    # the platform's own ids beside the unified keys: what the platform reading the table knows its users and
    # items by
    prefix = user_key(target, "")
    frame["platform_user_id"] = frame["user_id"].str.slice(len(prefix)).where(frame["user_id"].str.startswith(prefix))
    frame["platform_item_id"] = frame["item_id"].map(bundle.native_of).fillna(frame["item_id"])
    frame["model"] = registered_model_name(target)
    frame["model_version"] = str(version)
    frame["run_key"] = run_key
    final = layout.recommendations / target
    with atomic_dir(final) as out:
        frame.to_parquet(out / "recommendations.parquet", index=False)
        manifest = Published(
            target=target,
            published=True,
            path=str(final / "recommendations.parquet"),
            users=int(histories.size + short_users + len(opted_out)),
            opted_out_users=int(len(opted_out)),
            short_history_users=short_users,
            rows=int(len(frame)),
            model_version=str(version),
        )
        (out / "manifest.json").write_text(json.dumps(manifest.to_xcom(), indent=2))
    log.info(
        "published %d recommendations for %d %s users (champion v%s) to %s",
        len(frame),
        manifest.users,
        target,
        version,
        final,
    )
    return manifest


def _ranked_rows(users: Any, recs: Recommendations, personalised: list[bool]) -> pd.DataFrame:
    """One row per (user, rank) of the answers `recs` gives `users` (an answer may be shorter than k)."""
    return pd.DataFrame(
        {
            "user_id": [u for u, items in zip(users, recs.item_ids, strict=True) for _ in items],
            "rank": [r for items in recs.item_ids for r in range(1, len(items) + 1)],
            "item_id": [i for items in recs.item_ids for i in items],
            "score": [s for scores in recs.scores for s in scores],
            "personalised": [p for p, items in zip(personalised, recs.item_ids, strict=True) for _ in items],
        }
    )


# users ranked per call: each call scores a dense users x items block (float64), so the block stays ~100 MB for a
# catalogue of 5,000 items, whatever the number of users below the threshold
SHORT_HISTORY_BATCH = 2_500


def _short_history(
    bundle: ModelBundle, features: FeatureSet, target: str, kept: set[str], k: int, withdrawn: set[str]
) -> pd.DataFrame:
    """Consenting target users the features left out (fewer positives than features.min_interactions, or none yet):
    ranked from what the platform has of them, as serving ranks a user it does not know: their positive items (each
    counting its rating weight, as the model was trained; a request's items count 1), their profile, and their link
    id (a person known on a linked source gets their source histories' answer). A list that used none of these (no
    known item, no linked history, no profile the model reads) is the model's answer for nobody in particular:
    marked `personalised = false`."""
    udir = Path(features.unified)
    users = pd.read_parquet(udir / "users.parquet", filters=[("platform", "==", target)])
    users = users[users["consent"].astype(bool) & ~users["user_id"].isin(kept)].sort_values("user_id")
    if users.empty:
        return pd.DataFrame()
    ids = users["user_id"].tolist()
    positives = pd.read_parquet(
        udir / "interactions.parquet",
        columns=["user_id", "item_id", "rating", "timestamp"],
        filters=[("platform", "==", target), ("label", "==", 1), ("user_id", "in", ids)],
    ).sort_values("timestamp", kind="stable")
    positives["weight"] = interaction_weights(positives, _rating_weight(bundle))
    by_user = positives.groupby("user_id")["item_id"].agg(list)
    weight_of = positives.groupby("user_id")["weight"].agg(list)
    rated_low = _rated_low(features, target, ids)
    fields = [c for c in PROFILE_FIELDS if c in users and c in bundle.profiles]
    reads_profiles = bundle.profile_vocabulary is not None
    frames = []
    for start in range(0, len(users), SHORT_HISTORY_BATCH):
        part = users.iloc[start : start + SHORT_HISTORY_BATCH]
        histories = [by_user.get(u, []) for u in part["user_id"]]
        weights = [weight_of.get(u) for u in part["user_id"]]
        profiles = part[fields].reset_index(drop=True)
        links = [_unless(v, withdrawn) for v in part["link_id"]] if "link_id" in part else None
        excluded = rated_low[start : start + SHORT_HISTORY_BATCH]
        recs = bundle.recommend(histories, k, profiles, link_ids=links, weights=weights, excluded=excluded)
        profiled = profiles.notna().any(axis=1).to_numpy() if fields and reads_profiles else [False] * len(part)
        personal = [bool(used) or bool(p) for used, p in zip(recs.platforms, profiled, strict=True)]
        frames.append(_ranked_rows(part["user_id"], recs, personal))
    log.info("%s: %d consenting user(s) below the training threshold ranked from what they have", target, len(users))
    return pd.concat(frames, ignore_index=True)


def _rated_low(features: FeatureSet, target: str, users: list[str]) -> list[list[str]]:
    """Per user (in order), the items they rated low in this run's unified data: never published back to them."""
    low = disliked(features.unified, target, users).groupby("user_id")["item_id"].agg(list)
    return [low.get(u, []) for u in users]


def _unless(link: object, withdrawn: set[str]) -> str | None:
    """A link id to rank by, None where there is none or its person withheld consent on an account."""
    return link if isinstance(link, str) and link not in withdrawn else None


def _rating_weight(bundle: ModelBundle) -> float:
    """The rating weight the model was trained with (0, binary histories, for a model from before it was recorded)."""
    return float(bundle.meta.get("rating_weight", 0.0))


def _opted_out_users(features: FeatureSet, target: str) -> list[str]:
    """Target users who withheld consent (unified users with consent False): they get no personalised list."""
    users = pd.read_parquet(Path(features.unified) / "users.parquet", columns=["platform", "user_id", "consent"])
    users = users[(users["platform"] == target) & ~users["consent"].astype(bool)]
    return sorted(users["user_id"])


def _non_personalised(data: PlatformData, users: list[str], k: int) -> pd.DataFrame:
    """The target's most popular training items, the same list for everyone: nothing about the user is used."""
    train = data.frame[data.frame["split"] == "train"]
    popular = train["item_id"].value_counts().head(k)
    return pd.DataFrame(
        {
            "user_id": [u for u in users for _ in range(len(popular))],
            "rank": [r for _ in users for r in range(1, len(popular) + 1)],
            "item_id": [i for _ in users for i in popular.index],
            "score": [float(s) for _ in users for s in popular.to_numpy()],
            "personalised": False,
        }
    )
