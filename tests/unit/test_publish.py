"""Publish writes only from the unified data that is current."""

import json
import os

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import FeatureSet
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
