"""Publish writes only from the unified data that is current; evaluate and promote refuse an older run's data."""

import json
import os

import pytest

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout, Superseded
from transfer_rec.manifests import Candidate, Evaluation, FeatureSet
from transfer_rec.stages.evaluate import evaluate
from transfer_rec.stages.promote import promote
from transfer_rec.stages.publish import publish


def test_an_older_runs_publish_run_again_publishes_nothing(tmp_path, monkeypatch):
    # run N's publish cleared after run N+1 unified newer data (say, a person's withdrawn consent): publishing run
    # N's lists would give that person a personalised list again, over run N+1's
    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    layout = StateLayout.from_env()
    versions = layout.unified / ".versions"
    older, same, newer = (versions / f"current-{c * 12}" for c in "abc")
    for version, users in ((older, "u1"), (same, "u1"), (newer, "u2")):
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"hashes": {"ml-100k": {"users.tsv": users}}}))
    os.symlink(os.path.relpath(newer, layout.unified), layout.unified / "current")
    features = FeatureSet(dir=str(tmp_path / "f"), run_key="n", seed=0, n_items=0, platforms={}, unified=str(older))
    published = publish("ml-100k", features, load_config(), layout, "n")
    assert not published.published and "no longer current" in published.reason
    assert not (layout.recommendations / "ml-100k").exists()
    # a later run on the same data wrote a version of its own: that supersedes nothing (publish goes on, here to
    # find no champion in an empty registry)
    (layout.unified / "current").unlink()
    os.symlink(os.path.relpath(same, layout.unified), layout.unified / "current")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    again = publish("ml-100k", features, load_config(), layout, "n")
    assert not again.published and again.reason == "no champion in the registry"


def test_an_older_runs_evaluate_or_promote_cleared_after_newer_data_does_nothing(tmp_path, monkeypatch):
    """Run N's failed promote cleared (with its evaluate) after run N+1 promoted a model of newer data: judged on
    N's older split, N's candidate could be crowned over it, holding people who withdrew since. Both refuse."""
    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    layout = StateLayout.from_env()
    versions = layout.unified / ".versions"
    older, newer = versions / "current-a", versions / "current-b"
    for version, users in ((older, "u1"), (newer, "u2")):
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"hashes": {"ml-100k": {"users.tsv": users}}}))
    os.symlink(os.path.relpath(newer, layout.unified), layout.unified / "current")
    features = FeatureSet(dir=str(tmp_path / "f"), run_key="n", seed=0, n_items=0, platforms={}, unified=str(older))
    candidate = Candidate(
        target="ml-100k", bundle="b", baselines="e", run_id="r", model_uri="m", valid_ndcg=0.1, epochs=1
    )
    with pytest.raises(Superseded, match=r"evaluate ml-100k: this run's unified data .*current-a.* is no longer"):
        evaluate(candidate, features, load_config(), layout, "n")
    report = tmp_path / "evaluation.json"
    report.write_text(json.dumps({"data": {"unified": str(older), "hashes": {"ml-100k": {"users.tsv": "u1"}}}}))
    evaluation = Evaluation(
        target="ml-100k", k=10, test_users=1, retention_users=1, metrics={}, report=str(report), candidate=candidate
    )
    with pytest.raises(Superseded, match="promote ml-100k: .* a later run unified other data"):
        promote(evaluation, load_config().gate, layout, "n")
