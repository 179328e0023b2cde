"""The champion served over HTTP by `transfer-rec serve` (as `make serve` does: MLflow's scoring server behind a body
limit), on loopback."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from inline import run_inline
from ports import free_port_pair

from transfer_rec.runtime.processes import stop_group

MAX_BODY = 64 * 1024


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, world_maker):
    """One trained world and one server for the module's tests (training it is most of their time)."""
    tmp_path = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as monkeypatch:
        world_maker(tmp_path, monkeypatch)
        yield from _serve(tmp_path)


# the log of each server this module started, by its base URL
SERVER_LOGS: dict[str, str] = {}


def served_log(base: str) -> str:
    return SERVER_LOGS[base]


def _serve(tmp_path: Path):
    run_inline("http", gate_override="promote")
    port = free_port_pair()
    bin_dir = Path(sys.executable).parent
    log = open(tmp_path / "serve.log", "w")
    SERVER_LOGS[f"http://127.0.0.1:{port}"] = str(tmp_path / "serve.log")
    # what `make serve` runs: MLflow's scoring server behind the body limit, here with a 64 KiB limit
    proc = subprocess.Popen(
        [str(bin_dir / "transfer-rec"), "serve", "--model", "models:/transfer_rec-village@champion"]
        + ["--port", str(port), "--workers", "1", "--max-body-bytes", str(MAX_BODY), "--follow-seconds", "1"],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transfer-rec serve did not start: {(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        stop_group(proc)


def test_known_and_new_users_over_http_and_bad_requests_are_4xx(served):
    import mlflow

    bundle = mlflow.pyfunc.load_model("models:/transfer_rec-village@champion").unwrap_python_model().bundle
    user = next(iter(bundle.histories))
    history = bundle.histories[user][:2]
    # the signature types `history` as a list of strings: known users send an empty one
    status, body = post(
        f"{served}/invocations",
        {"dataframe_records": [{"user_id": user, "history": []}, {"history": history + ["no-such-course"]}]},
    )
    assert status == 200, body
    rows = body["predictions"]
    assert [r["request"] for r in rows].count(0) == 10 and [r["request"] for r in rows].count(1) == 10
    assert [r["unknown_items"] for r in rows if r["request"] == 1][0] == ["no-such-course"]

    status, body = post(f"{served}/invocations", {"dataframe_records": [{"user_id": "nobody", "history": []}]})
    assert 400 <= status < 500 and "nothing to recommend from" in json.dumps(body)
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": ["no-such-course"]}]})
    assert 400 <= status < 500 and "is known to the model" in json.dumps(body)
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": 42}]})
    assert 400 <= status < 500, body
    # a new user with a profile only (k = 0), and a profile value the model does not know
    profile = {f: values[0] for f, values in bundle.profile_vocabulary.items()}
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": [], **profile}]})
    assert status == 200 and len(body["predictions"]) == 10, body
    status, body = post(
        f"{served}/invocations", {"dataframe_records": [{"history": [], **profile, "occupation": "astronaut"}]}
    )
    assert 400 <= status < 500 and "unknown occupation 'astronaut'" in json.dumps(body), body
    status, body = post(
        f"{served}/invocations", {"dataframe_records": [{"user_id": user, "history": []}], "params": {"k": 0}}
    )
    assert 400 <= status < 500 and "between 1 and 1000" in json.dumps(body)
    # the server is still healthy after bad requests
    status, _ = post(
        f"{served}/invocations", {"dataframe_records": [{"user_id": user, "history": []}], "params": {"k": 3}}
    )
    assert status == 200


def _answer_of(base: str, user: str) -> tuple[str | None, list]:
    """The version named in the answer's header, and the answer to a known user's request."""
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps({"dataframe_records": [{"user_id": user, "history": []}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers.get("x-model-version"), json.loads(response.read())["predictions"]


def _until_version(base: str, user: str, version: str) -> list:
    deadline = time.monotonic() + 90
    while True:
        named, answer = _answer_of(base, user)
        if named == version:
            return answer
        assert time.monotonic() < deadline, f"the server still answers with {named}, not {version}"
        time.sleep(0.5)


def test_a_server_on_the_champion_alias_follows_it_and_keeps_its_model_when_the_registry_fails(served):
    """A promotion or rollback reaches a running server (a champion replaced because people withdrew consent must
    stop answering without a restart); an alias the registry cannot resolve leaves the loaded model answering."""
    import mlflow
    from mlflow import MlflowClient

    client, name = MlflowClient(), "transfer_rec-village"
    champion = client.get_model_version_by_alias(name, "champion")
    user = next(
        iter(mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}").unwrap_python_model().bundle.histories)
    )
    named, before = _answer_of(served, user)
    assert named == f"{name}/{champion.version}"
    twin = client.create_model_version(name, champion.source, run_id=champion.run_id)
    log = Path(served_log(served))
    try:
        client.set_registered_model_alias(name, "champion", twin.version)
        assert _until_version(served, user, f"{name}/{twin.version}") == before  # the same model, loaded anew
        assert f"{name}@champion moved to version {twin.version}" in log.read_text()
        client.delete_registered_model_alias(name, "champion")
        failed = f"{name}@champion not checked or not loaded, still answering with {name}/{twin.version}"
        deadline = time.monotonic() + 30
        while failed not in log.read_text():  # a check that found no champion, logged
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert _answer_of(served, user) == (f"{name}/{twin.version}", before)
        client.set_registered_model_alias(name, "champion", champion.version)
        assert _until_version(served, user, f"{name}/{champion.version}") == before
        for version in (champion.version, twin.version):  # the server removed only its own copies of the versions
            assert mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().bundle.histories[user]
    finally:
        client.set_registered_model_alias(name, "champion", champion.version)
        client.delete_model_version(name, twin.version)


def test_a_served_champion_stops_answering_from_people_named_on_its_withheld_list(served, tmp_path):
    """A champion that stays after people withdrew (no candidate replaced it) is given their list on its version
    (promote does it; registry.withhold here): the running server stops answering from their stored history, as if
    it did not know them, and answers from it again once the list no longer names them."""
    import mlflow
    from mlflow import MlflowClient

    from transfer_rec.registry.models import withhold
    from transfer_rec.serving.withheld import WITHHELD_TAG, Withheld

    client, name = MlflowClient(), "transfer_rec-village"
    champion = client.get_model_version_by_alias(name, "champion")
    histories = mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}").unwrap_python_model().bundle.histories
    gone, kept = list(histories)[:2]
    before = _answer_of(served, kept)
    listed = Withheld(frozenset({("village", gone)})).write(tmp_path / "withheld.json")
    log = Path(served_log(served))
    try:
        # logged to a run of its own (promote logs it to the evaluation's run), not to the champion's training run
        run = client.create_run(client.get_run(champion.run_id).info.experiment_id).info.run_id
        uri = withhold("village", champion.version, listed, run)
        assert client.get_model_version(name, champion.version).tags[WITHHELD_TAG] == uri
        deadline = time.monotonic() + 60
        while (status := post(f"{served}/invocations", {"dataframe_records": [{"user_id": gone}]}))[0] == 200:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert status[0] == 400 and f"unknown user {gone!r}" in status[1]["message"], status
        assert f"{name}/{champion.version} withholds 1 account(s)" in log.read_text()
        assert _answer_of(served, kept) == before, "everyone else is answered as before"
        # with items of their own, they are a new user: nothing of what the model stored about them is used
        request = {"dataframe_records": [{"user_id": gone, "history": [histories[kept][0]]}]}
        anonymous = {"dataframe_records": [{"history": [histories[kept][0]]}]}
        answered, fresh = post(f"{served}/invocations", request), post(f"{served}/invocations", anonymous)
        assert answered[0] == 200 and [r["item_id"] for r in answered[1]["predictions"]] == [
            r["item_id"] for r in fresh[1]["predictions"]
        ]
    finally:
        withhold("village", champion.version, None, "unused when clearing")
    assert WITHHELD_TAG not in (client.get_model_version(name, champion.version).tags or {})
    deadline = time.monotonic() + 60
    while post(f"{served}/invocations", {"dataframe_records": [{"user_id": gone}]})[0] != 200:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)


def test_requests_and_answers_in_the_platforms_own_ids(served):
    import mlflow

    bundle = mlflow.pyfunc.load_model("models:/transfer_rec-village@champion").unwrap_python_model().bundle
    user = next(iter(bundle.histories))
    own_user = user.removeprefix("village:")
    keys = bundle.histories[user][:2]
    own_items = [bundle.native_of[key] for key in keys]
    assert own_user != user and own_items != keys  # the platform's ids ("course-00012") are not the keys
    status, body = post(
        f"{served}/invocations",
        {
            "dataframe_records": [
                {"user_id": own_user, "history": []},
                {"user_id": user, "history": []},
                {"history": own_items},
                {"history": keys},
            ]
        },
    )
    assert status == 200, body
    answers = [[(r["item_id"], r["score"]) for r in body["predictions"] if r["request"] == n] for n in range(4)]
    assert answers[0] == answers[1] and answers[2] == answers[3] and all(len(a) == 10 for a in answers)
    assert {item for a in answers for item, _ in a} <= set(bundle.native_of.values())
    assert [r["unknown_items"] for r in body["predictions"] if r["request"] == 2][0] == []
    # a refusal starts with its reason, not with the request printed back
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"user_id": "nobody", "history": []}]})
    assert status == 400 and body["message"].startswith("row 0: unknown user 'nobody'"), body


def _raw_post(base: str, body: bytes | list[bytes]) -> tuple[int, dict]:
    """POST a body as given (a list is sent chunked, without Content-Length)."""
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if isinstance(body, list):
            conn.request("POST", "/invocations", iter(body), {"Content-Type": "application/json"}, encode_chunked=True)
        else:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_a_body_past_the_limit_is_refused_with_413_before_it_is_parsed(served):
    # a request the model would refuse anyway (too many rows), but it must not even be parsed; ~2 MB, more than the
    # socket buffers take: a server that answered without reading it would reset the connection instead
    rows = [{"user_id": f"u{i}", "history": []} for i in range(50_000)]
    big = json.dumps({"dataframe_records": rows}).encode()
    assert len(big) > 25 * MAX_BODY
    status, body = _raw_post(served, big)
    assert status == 413 and body["error_code"] == "REQUEST_TOO_LARGE", body
    assert f"at most {MAX_BODY:,} bytes" in body["message"] and f"{len(big):,}" in body["message"]
    # chunked, so no Content-Length tells the size up front
    status, body = _raw_post(served, [big[i : i + 8192] for i in range(0, len(big), 8192)])
    assert status == 413 and "at most" in body["message"], body
    # a body under the limit, chunked, is handed to the model whole
    import mlflow

    bundle = mlflow.pyfunc.load_model("models:/transfer_rec-village@champion").unwrap_python_model().bundle
    small = json.dumps({"dataframe_records": [{"user_id": next(iter(bundle.histories)), "history": []}]}).encode()
    status, body = _raw_post(served, [small[:10], small[10:]])
    assert status == 200 and len(body["predictions"]) == 10, body


def test_heavy_requests_get_small_answers_and_no_5xx_when_sent_together(served):
    """The heavy request of the issue, scaled to this catalogue: a history of every known item plus twice as many
    unknown ids, k = 1000; the unknown ids come back once, not once per answer row."""
    import mlflow

    bundle = mlflow.pyfunc.load_model("models:/transfer_rec-village@champion").unwrap_python_model().bundle
    target_items = sorted({item for history in bundle.histories.values() for item in history})
    known = target_items[: len(target_items) // 2]
    unknown = [f"nope-{i}" for i in range(2 * len(known))]
    body = json.dumps({"dataframe_records": [{"history": known + unknown}], "params": {"k": 1000}}).encode()
    assert len(body) < MAX_BODY

    def send(_: int) -> tuple[int, int, dict]:
        port = int(served.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            return response.status, len(payload), json.loads(payload)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(send, range(10)))
    assert [status for status, _, _ in answers] == [200] * 10
    for _, size, payload in answers:
        rows = payload["predictions"]
        assert sorted(rows[0]["unknown_items"]) == sorted(unknown)
        assert all(r["unknown_items"] == [] for r in rows[1:])
        # the answer grows with k, not with k x the unknown ids
        assert size < 200 * len(rows) + 40 * len(unknown), size
