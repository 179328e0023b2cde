"""The benchmark on a world of several platforms that share people (docs/evaluation.md, "Linked worlds").

    transfer-rec benchmark --platforms FILE --target-train F --target-valid F --target-test F --out DIR

FILE holds a `platforms:` list in config/pipeline.yaml's form (name, role, location, format, files, columns,
value_maps). Exactly one platform has role `target`; its files name only users and items (its interactions are the
three split files, TSV with user_id and item_id columns); every source names interactions, users and items. A users
column mapped to `email` (or `phone`) links people: it is hashed with the secret $TRANSFER_REC_PII_SALT as soon as it
is read and never kept; a `consent` column, if mapped, leaves people who did not consent unlinked and drops their
source interactions (the target's split files are taken as given). A target's `sources`, if given, are the only
sources it learns from; its catalogue is its items file. Relative locations are relative to FILE's folder.

Writes DIR/recommendations.tsv (the top 10 of every test user, new-to-target users included; train and valid items
excluded) and DIR/metrics.json: every contender's NDCG@10 (with a 95% bootstrap interval), Recall, Hit and MRR for
warm users, new-to-target users, and new users by how many sources they are linked on; the settings chosen.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from pydantic import ValidationError

from transfer_rec.config import PipelineConfig, PlatformConfig, problems_of
from transfer_rec.io.formats import read_table
from transfer_rec.io.storage import write_files_atomic
from transfer_rec.metrics.ranking import per_user_metrics, recommendation_rows, top_k
from transfer_rec.metrics.segments import group_summary
from transfer_rec.recommender.content import CONTENT_PARTS, content_vectors
from transfer_rec.recommender.linked import LinkedRecommender, binary, ease_target_columns, joint_rows
from transfer_rec.schema.unified import IDENTITY_COLUMNS, user_key
from transfer_rec.selection.linked import choose, ndcg_of
from transfer_rec.stages.unify import consent_flags, link_ids

log = logging.getLogger("transfer_rec.benchmark")

K = 10
# The newcomers' regulariser of the cross-platform EASE contender is searched far above the warm one: someone with
# no target history needs much stronger shrinkage of the source-to-target weights (../shared/LINKED-WORLD.md).
CONTENDER_NEW_L2 = (1000.0, 4000.0, 16000.0, 64000.0)


class World:
    """The platforms' tables as people x items matrices, rows aligned by person (one row per link id; an unlinked
    user is a person of their own)."""

    def __init__(self, registry: Path, splits: dict[str, str], value_maps: Collection[str] | None = None) -> None:
        platforms = read_registry(registry, value_maps)
        self.target = next(p for p in platforms if p.role == "target")
        # the target's `sources`, as in the pipeline (another family's people never reach its model); all by default
        chosen = self.target.sources
        self.source_configs = [p for p in platforms if p.role == "source" and (chosen is None or p.name in chosen)]
        base = registry.parent
        self.base = base
        person_of: dict[str, dict[str, str]] = {}
        for p in platforms:  # in the registry's order: a refusal names the first platform it meets
            if p is self.target or p in self.source_configs:
                person_of[p.name] = people_of(p, base)
        inter = {p.name: read_interactions(p, base) for p in self.source_configs}
        split_frames = {s: read_split(path) for s, path in splits.items()}
        # as unification refuses interactions of users its users file does not list (rule missing_users): such a
        # user could not be linked, nor told from someone who did not consent
        listed = set(platform_table(self.target, base, "users")["user_id"].astype(str))
        _refuse_outside(
            split_frames, splits, "user_id", listed, f"target {self.target.name}'s users file", "missing_users"
        )
        persons: list[str] = []
        index: dict[str, int] = {}

        def person(platform: str, user: str) -> int:
            key = person_of[platform].get(user) or user_key(platform, user)
            if platform == self.target.name and key in claimed and claimed[key] != user:
                # a second target account with the same identity (a shared family address): a row of its own,
                # with the person's source histories copied below, so neither account is merged into the other
                twins.setdefault(key, set()).add(user)
                key = user_key(platform, user)
            elif platform == self.target.name:
                claimed[key] = user
            if key not in index:
                index[key] = len(persons)
                persons.append(key)
            return index[key]

        claimed: dict[str, str] = {}
        twins: dict[str, set[str]] = {}
        for name, frame in [*inter.items(), *((self.target.name, f) for f in split_frames.values())]:
            frame["person"] = [person(name, u) for u in frame["user_id"]]
        for link, accounts in twins.items():
            for account in sorted(accounts):
                row = index[user_key(self.target.name, account)]
                for name, frame in inter.items():
                    theirs = frame[frame["person"] == index[link]]
                    inter[name] = pd.concat([inter[name], theirs.assign(person=row)], ignore_index=True)
        if twins:
            log.warning(
                "%s: %d target account(s) share an identity with another target account: each is a test user of its "
                "own, with the person's source histories",
                self.target.name,
                sum(len(a) for a in twins.values()),
            )
        self.n_people = len(persons)
        self.items = {p.name: items_of(p, base, inter.get(p.name)) for p in self.source_configs}
        # the target's catalogue is its items file alone: an item only the test file names must not become a
        # candidate (test data would shape what can be recommended)
        target_items = items_of(self.target, base, None)
        _refuse_outside(
            split_frames,
            splits,
            "item_id",
            set(target_items),
            f"target {self.target.name}'s items file",
            "the split files name items of the target's catalogue",
        )
        self.target_items = target_items
        self.sources = {n: self._matrix(f, self.items[n]) for n, f in inter.items()}
        self.splits = {s: self._matrix(f, target_items) for s, f in split_frames.items()}
        # the target's native user id of each person that has one
        self.target_user = np.full(self.n_people, None, dtype=object)
        for frame in split_frames.values():
            self.target_user[frame["person"].to_numpy()] = frame["user_id"].to_numpy()
        self.linked_sources = sum((np.diff(m.indptr) > 0).astype(int) for m in self.sources.values())

    def content(self, cache_dir: Path | None) -> dict[str, np.ndarray] | None:
        """Per source, its items' content vectors in its column order (recommender/content.py: genres, year, title
        embedding, one genre vocabulary for all sources); None when no items file has titles."""
        frames = []
        for p in self.source_configs:
            described = platform_table(p, self.base, "items").astype({"item_id": str}).drop_duplicates("item_id")
            frame = described.set_index("item_id").reindex(self.items[p.name]).rename_axis("item_id").reset_index()
            frames.append(frame.assign(source=p.name))
        items = pd.concat(frames, ignore_index=True)
        if "title" not in items or items["title"].isna().all():
            return None
        for column in ("year", "genres"):
            if column not in items:
                items[column] = None
        genres = items["genres"].fillna("").astype(str).str.replace("|", " ", regex=False).str.split()
        items = items.assign(item_idx=np.arange(len(items)), genres=genres.str.join("|"))
        vectors = content_vectors(items, CONTENT_PARTS, cache_dir)
        return {name: vectors[(items["source"] == name).to_numpy()] for name in self.sources}

    def _matrix(self, frame: pd.DataFrame, items: pd.Index) -> sp.csr_matrix:
        cols = items.get_indexer(frame["item_id"])
        rows = frame["person"].to_numpy()
        return binary(sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(self.n_people, len(items))))


def _refuse_outside(
    frames: dict[str, pd.DataFrame], paths: dict[str, str], column: str, known: set[str], where: str, rule: str
) -> None:
    """Refuse a split file whose `column` names an id outside `known` (what `where` lists), naming file and rule."""
    for split, frame in frames.items():
        outside = frame.loc[~frame[column].isin(known), column]
        if len(outside):
            kind = column.removesuffix("_id")
            raise SystemExit(
                f"{paths[split]}: column {column}: {outside.nunique()} {kind} id(s) not in {where} (rule: {rule}), "
                f"e.g. {outside.iloc[0]!r}"
            )


def read_registry(path: Path, value_maps: Collection[str] | None = None) -> list[PlatformConfig]:
    """The registry's platforms, checked as the pipeline's config checks them; `value_maps`: the names of
    config/pipeline.yaml's value maps, which the platforms' `value_maps` must name."""
    try:
        entries = yaml.safe_load(path.read_text())["platforms"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise SystemExit(f"{path}: not a platform registry with a `platforms:` list ({exc})") from exc
    platforms = []
    for n, entry in enumerate(entries):
        try:
            platforms.append(PlatformConfig.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("name", f"#{n + 1}") if isinstance(entry, dict) else f"#{n + 1}"
            raise SystemExit(f"{path}: platform {name}: {'; '.join(problems_of(exc))}") from exc
    names = [p.name for p in platforms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # people, items and users are keyed by platform name: a repeat would merge two platforms
        raise SystemExit(f"{path}: platform names must be unique, {repeated} given more than once")
    targets = [p.name for p in platforms if p.role == "target"]
    if len(targets) != 1:
        raise SystemExit(f"{path}: exactly one platform must have role 'target', found {targets}")
    if not any(p.role == "source" for p in platforms):
        raise SystemExit(f"{path}: at least one platform must have role 'source' (the target learns from them)")
    sources = sorted(p.name for p in platforms if p.role == "source")
    for p in platforms:
        needed = {"users", "items"} | ({"interactions"} if p.role == "source" else set())
        if needed - set(p.files):
            raise SystemExit(f"{path}: platform {p.name} ({p.role}) must name files {sorted(needed - set(p.files))}")
        if p.role == "target" and "interactions" in p.files:
            raise SystemExit(
                f"{path}: platform {p.name}: a target names no interactions file (its interactions are the three "
                "split files, --target-train/-valid/-test)"
            )
        if p.sources is not None and (p.role != "target" or not p.sources or set(p.sources) - set(sources)):
            raise SystemExit(
                f"{path}: platform {p.name}: `sources` is the target's, and names one or more source platforms of "
                f"the registry (sources: {sources}; given {p.sources})"
            )
        for column, name in p.value_maps.items():
            if value_maps is not None and name != "age_years" and name not in value_maps:
                raise SystemExit(
                    f"{path}: platform {p.name}: value map {name!r} for {column!r} is not one of "
                    f"config/pipeline.yaml's value_maps ({sorted(value_maps)})"
                )
    return platforms


def _no_empty_ids(frame: pd.DataFrame, columns: list[str], where: str) -> pd.DataFrame:
    """Refuse rows whose id is empty (rule: ids are never empty): an empty user id would pool strangers' histories
    into one person, an empty item id would become an item."""
    for column in columns:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            raise SystemExit(
                f"{where}: column {column}: {int(empty.sum())} row(s) with an empty id (rule: ids are never empty), "
                f"first at data row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}"
            )
    return frame


def platform_table(p: PlatformConfig, base: Path, table: str) -> pd.DataFrame:
    path = base / p.location / p.files[table]
    if not path.is_file():
        raise SystemExit(f"platform {p.name}: {path} (files.{table}, under location {p.location!r}) does not exist")
    frame = read_table(path, p.format, p.delimiter)
    mapping = p.columns.get(table, {})
    missing = [native for native in mapping if native not in frame.columns]
    if missing:
        raise SystemExit(f"platform {p.name}: {path}: column(s) {missing} named in columns.{table} are missing")
    return frame[list(mapping)].rename(columns=mapping)


def people_of(p: PlatformConfig, base: Path) -> dict[str, str]:
    """user id -> link id for the platform's consenting users with an identity column; raw identities dropped here."""
    users = _no_empty_ids(platform_table(p, base, "users"), ["user_id"], f"platform {p.name}: {p.files['users']}")
    users["user_id"] = users["user_id"].astype(str)
    links = link_ids(p.name, users).where(consent_flags(users))
    users = users.drop(columns=[c for c in IDENTITY_COLUMNS if c in users])
    linked = links.notna()
    return dict(zip(users["user_id"][linked], links[linked].astype(str), strict=True))


def read_interactions(p: PlatformConfig, base: Path) -> pd.DataFrame:
    """A source's interactions, without those of users its `consent` column (if mapped) does not say opted in (one
    missing from the users file included): as in unification, their data trains no model."""
    frame = platform_table(p, base, "interactions")[["user_id", "item_id"]]
    frame = _no_empty_ids(frame, ["user_id", "item_id"], f"platform {p.name}: {p.files['interactions']}").astype(str)
    if "consent" in p.columns.get("users", {}).values():
        # only people who said yes: one missing from the users file gave no consent either (unification refuses
        # such a batch, rule missing_users; here their rows are left out, with a warning)
        users = platform_table(p, base, "users")
        consenting = set(users["user_id"].astype(str)[consent_flags(users).to_numpy()])
        kept = frame["user_id"].isin(consenting)
        if not kept.all():
            log.warning("%s: %d interaction(s) of people without consent left out", p.name, int((~kept).sum()))
        frame = frame[kept]
    return frame.drop_duplicates().reset_index(drop=True)


def read_split(path: str) -> pd.DataFrame:
    frame = read_table(Path(path), "recbole")
    missing = {"user_id", "item_id"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)} (need user_id, item_id)")
    frame = _no_empty_ids(frame[["user_id", "item_id"]], ["user_id", "item_id"], path).astype(str)
    return frame.drop_duplicates().reset_index(drop=True)


def items_of(p: PlatformConfig, base: Path, interactions: pd.DataFrame | None) -> pd.Index:
    """The platform's catalogue: its items file, and any item its interactions name."""
    described = platform_table(p, base, "items")["item_id"].astype(str)
    seen = interactions["item_id"] if interactions is not None else pd.Series([], dtype=str)
    return pd.Index(pd.unique(pd.concat([described, seen])))


def group_metrics(ranked: np.ndarray, relevant: sp.csr_matrix, users: np.ndarray) -> dict[str, Any]:
    return group_summary(per_user_metrics(ranked[users], relevant[users], K)) if len(users) else {"users": 0}


def report_groups(world: World, scores: np.ndarray, test_users: np.ndarray, warm: np.ndarray) -> dict[str, Any]:
    seen = world.splits["train"] + world.splits["valid"]
    ranked = top_k(scores, K, seen[test_users], fill=False)
    relevant = world.splits["test"][test_users]
    is_warm = np.isin(test_users, warm)
    out = {
        "warm": group_metrics(ranked, relevant, np.flatnonzero(is_warm)),
        "new": group_metrics(ranked, relevant, np.flatnonzero(~is_warm)),
    }
    n_sources = world.linked_sources[test_users]
    for count in range(len(world.sources) + 1):
        out[f"new_on_{count}_sources"] = group_metrics(
            ranked, relevant, np.flatnonzero(~is_warm & (n_sources == count))
        )
    return out


def contenders(world: World, warm: np.ndarray, test_users: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The reference methods of ../shared/LINKED-WORLD.md, each scoring every test user."""
    train, valid = world.splits["train"], world.splits["valid"]
    n_target = train.shape[1]
    popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    new = np.setdiff1d(test_users, warm)
    judges = np.flatnonzero((np.diff(valid.indptr) > 0) & (np.diff(train.indptr) > 0))
    out: dict[str, np.ndarray] = {}
    base = np.tile(popularity, (len(test_users), 1))
    out["popularity"] = base.copy()

    def valid_best(joint: sp.csr_matrix) -> np.ndarray:
        best = max(
            (
                (ndcg_of(np.asarray(joint[judges] @ w), valid[judges], train[judges], K), i, w)
                for i, w in enumerate(ease_target_columns(joint, n_target, l2) for l2 in (100.0, 250.0, 500.0, 1000.0))
            ),
            key=lambda t: (t[0], -t[1]),
        )
        return best[2]

    at = {u: i for i, u in enumerate(test_users)}
    newcomers = set(new.tolist())
    rows_warm = np.array([at[u] for u in test_users if u not in newcomers], dtype=int)
    warm_test = test_users[rows_warm]
    ease = valid_best(train)
    scores = base.copy()
    scores[rows_warm] = np.asarray(train[warm_test] @ ease)
    out["ease_target"] = scores

    all_sources = {n: 1.0 for n in world.sources}
    joint = joint_rows(world.sources, all_sources, train)
    weights = valid_best(joint)
    n_source_cols = joint.shape[1] - n_target
    rows_new = np.setdiff1d(np.arange(len(test_users)), rows_warm)
    on_source = world.linked_sources[new] > 0
    scores = base.copy()
    scores[rows_warm] = np.asarray(joint[warm_test] @ weights)
    scores[rows_new[on_source]] = np.asarray(joint[new[on_source], :n_source_cols] @ weights[:n_source_cols])
    out["cross_ease"] = scores.copy()

    # newcomers' regulariser chosen on simulated newcomers (warm people on a source, their target rows withheld)
    simulated = np.flatnonzero((np.diff(train.indptr) > 0) & (world.linked_sources > 0))
    fold = np.random.default_rng(seed).integers(0, 2, len(simulated))
    known = binary(train + valid)
    best = (-1.0, CONTENDER_NEW_L2[0])
    for l2 in CONTENDER_NEW_L2:
        values = []
        for f in (0, 1):
            held = simulated[fold == f]
            keep = np.ones(train.shape[0])
            keep[held] = 0
            fit = joint_rows(world.sources, all_sources, sp.diags(keep) @ train)
            w = ease_target_columns(fit, n_target, l2)
            ranked = top_k(np.asarray(fit[held, :n_source_cols] @ w[:n_source_cols]), K)
            values.append(per_user_metrics(ranked, known[held], K)["ndcg"])
        best = max(best, (float(np.concatenate(values).mean()) if len(simulated) else 0.0, l2))
    log.info("cross-platform EASE contender: newcomers' l2 %s (simulated-newcomer NDCG %.4f)", best[1], best[0])
    newcomer = ease_target_columns(joint, n_target, best[1])
    scores[rows_new[on_source]] = np.asarray(joint[new[on_source], :n_source_cols] @ newcomer[:n_source_cols])
    out["cross_ease_newcomer_l2"] = scores
    return out


def run_platforms(args: argparse.Namespace, config: PipelineConfig) -> dict[str, Any]:
    started = time.perf_counter()
    world = World(
        Path(args.platforms),
        {"train": args.target_train, "valid": args.target_valid, "test": args.target_test},
        set(config.value_maps),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # once the world is read: a refused one leaves no folder behind
    read_seconds = time.perf_counter() - started
    train, valid, test = (world.splits[s] for s in ("train", "valid", "test"))
    # new to the target: no train rows (every model here reads train histories: a user with valid rows alone is
    # answered as a newcomer, and counted as one)
    warm = np.flatnonzero(np.diff(train.indptr) > 0)
    test_users = np.flatnonzero(np.diff(test.indptr) > 0)
    log.info(
        "world: %d people; target %s: %d items, %d warm and %d new test users; sources %s",
        world.n_people,
        world.target.name,
        train.shape[1],
        int(np.isin(test_users, warm).sum()),
        int((~np.isin(test_users, warm)).sum()),
        {n: m.shape[1] for n, m in world.sources.items()},
    )
    started = time.perf_counter()
    vectors = world.content(out / ".cache")
    choice = choose(world.sources, train, valid, k=K, seed=config.training.seed, vectors=vectors)
    model = LinkedRecommender(choice.settings, vectors).fit(world.sources, train, known=train + valid)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = {"linked": model.score({n: m[test_users] for n, m in world.sources.items()}, train[test_users])}
    score_seconds = time.perf_counter() - started
    scores.update(contenders(world, warm, test_users, config.training.seed))
    metrics = {name: report_groups(world, s, test_users, warm) for name, s in scores.items()}

    seen = train + valid
    ranked = top_k(scores["linked"], K, seen[test_users], fill=False)
    recs = recommendation_rows(world.target_user[test_users], np.asarray(world.target_items), ranked)
    report = {
        "k": K,
        "target": world.target.name,
        "sources": list(world.sources),
        "test_users": int(len(test_users)),
        "metrics": metrics,
        "settings": choice.summary(),
        "seconds": {"read": read_seconds, "choose_and_fit": fit_seconds, "score_test_users": score_seconds},
    }
    write_files_atomic(
        out,
        {
            "recommendations.tsv": recs.to_csv(sep="\t", index=False),
            "metrics.json": json.dumps(report, indent=2, default=str),
        },
    )
    return report


def print_report(report: dict[str, Any]) -> None:
    groups = list(next(iter(report["metrics"].values())))
    print(f"\ntarget {report['target']}, sources {report['sources']}: NDCG@{report['k']} (users)")
    print(f"{'contender':<26}" + "".join(f"{g:>18}" for g in groups))
    for name, by_group in report["metrics"].items():
        cells = [f"{v['ndcg']:.4f} ({v['users']})" if v["users"] else "-" for v in by_group.values()]
        print(f"{name:<26}" + "".join(f"{c:>18}" for c in cells))
    print(f"settings: {report['settings']}")
    print(f"seconds: {report['seconds']}")
