"""The served model bounds what it is asked: unknown ids once per request row, and requests past the limits refused
with a 400 (RequestError) that names the limit, before any scoring."""

import pandas as pd
import pytest
from test_serving_known_cache import bundle

from transfer_rec.serving import pyfunc
from transfer_rec.serving.pyfunc import RequestError, recommend_frame


def test_unknown_ids_are_listed_once_per_request_row():
    unknown = [f"nope-{n}" for n in range(500)]
    out = recommend_frame(bundle(), pd.DataFrame({"history": [["i0", *unknown], ["i1"]]}), 10)
    first = out[out["request"] == 0]
    assert first["unknown_items"].iloc[0] == unknown
    assert all(len(ids) == 0 for ids in first["unknown_items"].iloc[1:]), "not repeated on every answer row"
    assert sum(len(ids) for ids in out["unknown_items"]) == len(unknown)


def test_requests_past_the_limits_are_refused_before_scoring(monkeypatch):
    model = bundle()
    model.model.score = lambda *a, **k: pytest.fail("scored a request past the limits")
    many = pd.DataFrame({"user_id": ["u1"] * (pyfunc.MAX_ROWS + 1)})
    with pytest.raises(RequestError, match="1,001 rows in one request; at most 1,000"):
        recommend_frame(model, many, 10)
    with pytest.raises(RequestError, match="would answer 200,000 rows; at most 100,000"):
        recommend_frame(model, pd.DataFrame({"user_id": ["u1"] * 200}), 1000)
    long = pd.DataFrame({"history": [["i0"] * (pyfunc.MAX_HISTORY + 1)]})
    with pytest.raises(RequestError, match="row 0: a history of 10,001 items; at most 10,000"):
        recommend_frame(model, long, 10)


def test_the_heavy_request_is_answered_small():
    # one history of 5,000 ids, two thirds unknown and distinct, k = 1000: the answer stays well under 1 MB
    ids = [f"i{n % 6}" if n < 1_650 else f"unknown-{n}" for n in range(5_000)]
    out = recommend_frame(bundle(), pd.DataFrame({"history": [ids]}), 1000)
    assert sum(len(u) for u in out["unknown_items"]) == 3_350, "each unknown id listed once"
    assert len(out.to_json(orient="records")) < 1_000_000
