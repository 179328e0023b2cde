"""The model registry on PostgreSQL, as the production stack runs it: MLflow keeps a version's description in a
VARCHAR(5000) column, which SQLite (the default registry) never enforces. A long model card (a linked target with
a champion and segments by source) must still describe its version, cut to fit, with the whole card on its run."""

from __future__ import annotations

import socket
import uuid

import pytest
from mlflow.tracking import MlflowClient

from transfer_rec.registry import models as registry
from transfer_rec.stages.promote import CARD_FILE, GateDecision, fit_card, model_card

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_registry(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.settimeout(2)
        if sock.connect_ex(("127.0.0.1", 5432)) != 0:
            pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (trust auth, user postgres)")
    import psycopg2
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    name = f"transfer_rec_test_reg_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    # the registry follows the tracking URI; MLflow's global URI goes back to what it was afterwards (a URI pinned
    # here would send later tests in this process to this database)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{PG}/{name}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        with _use_tracking_uri(f"{PG}/{name}"):
            yield tmp_path
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def long_report() -> dict:
    metrics = {"ndcg": 0.3, "recall": 0.2, "retention": 0.8, "retention_new": 0.5, "coverage": 0.4}
    contenders = ("candidate", "champion", "target_only", "ease", "popularity")
    segments = [f"history {n}-{n + 4}" for n in range(1, 100, 5)] + [f"new, on {n} sources" for n in range(3)]
    return {
        "target": "action",
        "k": 10,
        "test_users": 900,
        "metrics": {c: metrics for c in contenders},
        "segments": [
            {"segment": s, "contender": c, "metric": m, "users": 40, "mean": 0.3, "ci_low": 0.2, "ci_high": 0.4}
            for s in segments
            for c in contenders
            for m in ("ndcg", "retention")
        ],
    }


def test_a_long_model_card_describes_its_version_cut_to_the_registry_column(postgres_registry):
    decision = GateDecision(True, ["pass: NDCG 0.300 >= 0.05", "pass: beats the champion"])
    card = model_card(long_report(), decision, "r1")
    assert len(card) > registry.DESCRIPTION_MAX, "the report must give a card past the column"
    client = MlflowClient()
    name = registry.registered_model_name("action")
    client.create_registered_model(name)
    source = postgres_registry / "model"
    source.mkdir()
    version = client.create_model_version(name, str(source)).version
    with pytest.raises(Exception, match="(?i)too long|value too long"):
        client.update_model_version(name, version, description=card)  # what promote did before
    fitted = fit_card(card, f"{CARD_FILE} on run r-1")
    registry.describe("action", str(version), {"gate.decision": "promoted"}, fitted)
    stored = client.get_model_version(name, version).description
    assert stored == fitted and len(stored) <= registry.DESCRIPTION_MAX
    # the headline table and the decision stay; the note says where the rest is
    assert "**Accuracy and retention**" in stored and stored.rstrip().endswith("- pass: beats the champion")
    assert f"the whole card is {CARD_FILE} on run r-1" in stored
    assert fit_card("short card", "x") == "short card"
