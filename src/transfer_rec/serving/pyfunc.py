"""The MLflow pyfunc model: recommendations for known users (by id) and new users (by history), top-K with scores."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from transfer_rec.schema.unified import PROFILE_FIELDS
from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.serving.withheld import NOBODY, Withheld

DEFAULT_K = 10
# Requests with at most this many rows are scored on one thread (see TransferRecModel.predict).
SMALL_REQUEST_ROWS = 64
# What one request may ask, refused with a 400 before any scoring: rows, items per history, and answer rows
# (rows x k). A request past them is a batch job, not a serving call: publish covers every user of a target.
MAX_ROWS = 1_000
MAX_HISTORY = 10_000
MAX_ANSWER_ROWS = 100_000

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.string, "user_id", required=False),
            ColSpec(Array(DataType.string), "history", required=False),
            *(ColSpec(DataType.string, field, required=False) for field in PROFILE_FIELDS),
            # the platform `user_id` is an account of (default: this model's target), or the person's link id
            ColSpec(DataType.string, "platform", required=False),
            ColSpec(DataType.string, "link_id", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec(DataType.long, "request"),
            ColSpec(DataType.string, "user_id", required=False),
            ColSpec(DataType.long, "rank"),
            ColSpec(DataType.string, "item_id"),
            ColSpec(DataType.double, "score"),
            ColSpec(Array(DataType.string), "unknown_items"),
            ColSpec(Array(DataType.string), "platforms_used"),
        ]
    ),
    params=ParamSchema([ParamSpec("k", DataType.long, DEFAULT_K)]),
)


class RequestError(MlflowException):
    """A serving request that cannot be answered; the message says which row and why (HTTP 400 when served).

    The message is the reason alone: MLflow's scoring server prefixes a caught error's message with the whole
    request printed as a DataFrame, which buried the reason under the caller's own data; that prefix is dropped."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):
            self._reason = value


def input_example(bundle: ModelBundle) -> pd.DataFrame:
    """A new user by a short history and, if the model has a profile prior, a new user by profile alone. Nobody's
    data: the history is the target's first candidate items (in its own ids), not a known user's, since the example
    is stored with every model version and outlives any person's consent."""
    items = bundle.item_ids[bundle.candidates][:3]
    history = [bundle.native_of.get(item, item) for item in items.tolist()]
    example = pd.DataFrame({"user_id": [None], "history": [history]})
    vocabulary = bundle.profile_vocabulary
    if vocabulary and all(vocabulary[f] for f in PROFILE_FIELDS):
        profile = {f: vocabulary[f][len(vocabulary[f]) // 2] for f in PROFILE_FIELDS}
        example = pd.concat([example, pd.DataFrame([{"user_id": None, "history": None, **profile}])], ignore_index=True)
    return example


class TransferRecModel(mlflow.pyfunc.PythonModel):
    """Input rows: `user_id` (a known user; with `platform`, an account on another platform the model knows),
    `link_id` (a person by link id), `history` (a list of item ids) and profile fields (age, gender, occupation: the
    unified values), each optional; a row needs at least one usable part. Users and items are named as the target
    platform names them (its own ids); the unified keys are accepted too. Output: one row per recommended item with
    the request row, user_id, rank, item_id (the target's own id), score, and on the request's first answer row only
    the history's unknown item ids and the platforms whose histories were used.

    `withheld`: people this model must no longer answer from (serving/withheld.py); the server sets it."""

    withheld = NOBODY

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))
        weights = getattr(self.bundle.model, "weights", None)
        if isinstance(weights, np.ndarray):
            # Row-major, so a history times the item-item weights reads only the history's rows; a column-major
            # matrix is copied whole on every request (20 ms on the ML-100K model).
            self.bundle.model.weights = np.ascontiguousarray(weights)
        # a request naming only a known user becomes a lookup of scores computed here, once
        self.bundle.precompute_known()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        given = (params or {}).get("k")
        k = DEFAULT_K if given is None else int(given)  # MLflow's signature refuses other types, not a null
        if not 1 <= k <= 1000:
            raise RequestError(f"param k must be between 1 and 1000, got {k}")
        if len(model_input) > SMALL_REQUEST_ROWS:
            return recommend_frame(self.bundle, model_input, k, self.withheld)
        # A few users are a few vector products: one thread answers them ~30x faster than torch's thread pool on a
        # busy 2-core machine (measured by bench.latency). Restored afterwards, as the evaluation stage loads
        # champions into a training process.
        # One small request at a time: the scoring server answers each request in its own thread, and two that
        # overlap would each save the other's 1 and leave torch on one thread for every later large request.
        with _ONE_THREAD:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return recommend_frame(self.bundle, model_input, k, self.withheld)
            finally:
                torch.set_num_threads(threads)


_ONE_THREAD = threading.Lock()


def _missing(value: Any) -> bool:
    """A field left out: absent, null (None, NaN, pd.NA) or "" (which clients send for a field they leave out)."""
    if isinstance(value, str):
        return value == ""
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def _text(request: dict[str, Any], column: str, row: int) -> str | None:
    value = request.get(column)
    if _missing(value):
        return None
    if not isinstance(value, str):
        raise RequestError(f"row {row}: {column!r} must be a string, got {type(value).__name__}")
    return value


def _person(
    bundle: ModelBundle, request: dict[str, Any], row: int, withheld: Withheld = NOBODY
) -> tuple[str | None, str | None]:
    """(the target user the row names, if any; the person's link id, if the model can link them). A person named by
    a source account or link id who also has a target account is that target user: ranked from their target history
    too, and never shown what they already have there. A `withheld` account or link is as if the model did not know
    it: not answered from, and never followed to another account of the person."""
    user, platform, link = (
        _text(request, "user_id", row),
        _text(request, "platform", row),
        _text(request, "link_id", row),
    )
    if withheld.link(link):
        link = None
    if platform is not None and platform != bundle.target:
        if user is None:
            raise RequestError(f"row {row}: 'platform' {platform!r} names whose account? give its 'user_id' too")
        known_platforms = sorted(set(bundle.accounts["platform"]) - {bundle.target})
        if platform not in known_platforms:
            raise RequestError(
                f"row {row}: platform {platform!r} is not linked to {bundle.target!r} in this model "
                f"(linked: {known_platforms or 'none'})"
            )
        own = bundle.link_of(platform, user)
        own = None if withheld.link(own) else own
        if link is not None and own is not None and link != own:
            raise RequestError(f"row {row}: 'link_id' names another person than {platform} account {user!r}")
        link = link or own
        theirs = bundle.target_user_of(link)
        return None if withheld.account(bundle.target, theirs) else theirs, link
    if user is not None:
        user = bundle.user_key(user)
        user = None if withheld.account(bundle.target, user) else user
        own, theirs = bundle.link_of(bundle.target, user), bundle.target_users_of(link)
        # a link id of target accounts names those people only (a family's shared one too: not an unrelated user)
        if link is not None and ((own is not None and link != own) or (theirs and user not in theirs)):
            raise RequestError(f"row {row}: 'link_id' names another person than user {request.get('user_id')!r}")
    elif link is not None:
        user = bundle.target_user_of(link)
        user = None if withheld.account(bundle.target, user) else user
    link = link or bundle.link_of(bundle.target, user)
    return user, None if withheld.link(link) else link


def _profile(
    request: dict[str, Any], row: int, stored: dict[str, str], vocabulary: dict[str, list[str]] | None
) -> dict[str, Any] | None:
    """The row's profile: the request's fields over the known user's stored ones; None if the model has no prior or
    the row has no profile. A value the model does not know is a clear error naming the field and the values."""
    given = {}
    for field in PROFILE_FIELDS:
        value = request.get(field)
        if _missing(value):
            continue
        if not isinstance(value, str):
            raise RequestError(f"row {row}: profile field {field!r} must be a string, got {type(value).__name__}")
        if vocabulary is not None and value not in vocabulary[field]:
            raise RequestError(f"row {row}: unknown {field} {value!r}; the model knows {vocabulary[field]}")
        given[field] = value
    if vocabulary is None:
        return None
    return (stored | given) or None


def check_size(requests: pd.DataFrame, k: int) -> None:
    """Refuse a request past the serving limits, naming the limit."""
    if len(requests) > MAX_ROWS:
        raise RequestError(f"{len(requests):,} rows in one request; at most {MAX_ROWS:,} (split the request)")
    if len(requests) * k > MAX_ANSWER_ROWS:
        raise RequestError(
            f"{len(requests):,} rows x k = {k} would answer {len(requests) * k:,} rows; at most {MAX_ANSWER_ROWS:,}"
        )
    if "history" in requests:
        for row, history in enumerate(requests["history"].tolist()):
            if hasattr(history, "__len__") and not isinstance(history, str) and len(history) > MAX_HISTORY:
                raise RequestError(f"row {row}: a history of {len(history):,} items; at most {MAX_HISTORY:,}")


def recommend_frame(
    bundle: ModelBundle, requests: pd.DataFrame, k: int = DEFAULT_K, withheld: Withheld = NOBODY
) -> pd.DataFrame:
    if not isinstance(requests, pd.DataFrame) or not (
        {"user_id", "link_id", "history", *PROFILE_FIELDS} & set(requests.columns)
    ):
        raise RequestError(
            "requests need a 'user_id' column (with 'platform' for another platform's account), a 'link_id' column, "
            f"a 'history' column (list of item ids) or profile columns ({', '.join(PROFILE_FIELDS)}), or several"
        )
    check_size(requests, k)
    vocabulary = bundle.profile_vocabulary
    histories, weights, profiles, plain_known, links, excluded = [], [], [], [], [], []
    rated_low = bundle.disliked_items()
    # column by column: DataFrame.to_dict("records") alone cost ~1 ms of a one-user request
    wanted = [c for c in ("user_id", "history", *PROFILE_FIELDS, "platform", "link_id") if c in requests.columns]
    columns = {c: requests[c].tolist() for c in wanted}
    records = [{c: columns[c][row] for c in wanted} for row in range(len(requests))]
    for row, request in enumerate(records):
        history = request.get("history")
        history = [] if history is None or (isinstance(history, float) and pd.isna(history)) else history
        if isinstance(history, str):
            history = [history]
        if not isinstance(history, (list, tuple)) and not hasattr(history, "tolist"):
            raise RequestError(f"row {row}: 'history' must be a list of item ids, got {type(history).__name__}")
        user, link = _person(bundle, request, row, withheld)
        known = bundle.histories.get(user, []) if user is not None else []
        merged = list(known) + [str(i) for i in list(history)]
        profile = _profile(request, row, bundle.profile_of(user), vocabulary)
        linked = bundle.linked is not None and link is not None and bundle.linked.knows(link)
        usable = (
            bool(known)
            or any(bundle.item_position(item) is not None for item in merged)
            or profile is not None
            or linked
        )
        if not usable:
            what = (
                f"none of the history's {len(merged)} item ids is known to the model (e.g. {merged[0]!r})"
                if merged
                else "no history"
            )
            hint = "" if vocabulary is not None else " (this model has no profile prior, so a profile cannot help)"
            named = _text(request, "user_id", row)
            who = "a request naming no user" if named is None else f"unknown user {named!r}"
            who += f" on {request.get('platform')!r}" if _text(request, "platform", row) is not None else ""
            asked = link or _text(request, "link_id", row)
            if named is None and asked is not None:
                who = f"link id {asked!r} " + (
                    "is not a person this model knows on a source"
                    if bundle.linked is not None
                    else "cannot help: this model links no platforms"
                )
            raise RequestError(f"row {row}: {who}, {what} and no profile: nothing to recommend from{hint}")
        histories.append(merged)
        # the stored items count as the model was judged on them; items the request adds count 1 (no rating)
        stored = bundle.history_weights.get(user) if user is not None else None
        weights.append(None if stored is None else list(stored) + [1.0] * (len(merged) - len(known)))
        profiles.append(profile or {})
        # exactly the stored user: no items or profile fields added by the request
        adds = bool(len(merged) - len(known)) or any(not _missing(request.get(f)) for f in PROFILE_FIELDS)
        # a link id from the request, not the known user's own, is scored afresh
        plain_known.append(user if known and not adds and link == bundle.link_of(bundle.target, user) else None)
        links.append(link)
        excluded.append(rated_low.get(user, []) if user is not None else [])
    recs = bundle.recommend(
        histories,
        k,
        {f: [p.get(f) for p in profiles] for f in PROFILE_FIELDS} if vocabulary is not None else None,
        known=plain_known,
        link_ids=links,
        weights=weights,
        excluded=excluded,
    )
    out: dict[str, list] = {
        "request": [],
        "user_id": [],
        "rank": [],
        "item_id": [],
        "score": [],
        "unknown_items": [],
        "platforms_used": [],
    }
    for row, request in enumerate(records):
        user = request.get("user_id")
        user = None if _missing(user) else user
        items = recs.item_ids[row]
        out["request"] += [row] * len(items)
        out["user_id"] += [user] * len(items)
        out["rank"] += list(range(1, len(items) + 1))
        out["item_id"] += [bundle.native_of.get(item, item) for item in items]
        out["score"] += recs.scores[row]
        # once per request row (on its first answer row), not on every answer row: a long list of unknown ids
        # repeated k times made a 140 KB request answer with 102 MB
        out["unknown_items"] += [recs.unknown_items[row]] + [[] for _ in range(len(items) - 1)] if items else []
        out["platforms_used"] += [recs.platforms[row]] + [[] for _ in range(len(items) - 1)] if items else []
    frame = pd.DataFrame(out)
    # an anonymous row's user id stays None beside named ones: a text column would turn it into NaN, which MLflow
    # writes as a bare NaN that strict JSON parsers refuse (the whole answer unreadable)
    frame["user_id"] = pd.Series(out["user_id"], dtype=object)
    return frame
