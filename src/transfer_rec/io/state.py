"""Where local state lives: one git-ignored folder holding the lake, models, MLflow and Airflow home."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transfer_rec.config import REPO_ROOT


@dataclass(frozen=True)
class StateLayout:
    """The folders of the local state folder; every stage reads and writes below `root`."""

    root: Path

    @classmethod
    def from_env(cls) -> StateLayout:
        return cls(Path(os.environ.get("TRANSFER_REC_STATE_DIR", REPO_ROOT / "var")).resolve())

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def landing(self) -> Path:
        return self.lake / "landing"

    @property
    def quarantine(self) -> Path:
        return self.lake / "quarantine"

    @property
    def unified(self) -> Path:
        return self.lake / "unified"

    @property
    def features(self) -> Path:
        return self.lake / "features"

    @property
    def data_docs(self) -> Path:
        """Great Expectations validation pages, data_docs/<platform>/<batch>/ (served by the Airflow plugin)."""
        return self.root / "data_docs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def recommendations(self) -> Path:
        return self.root / "recommendations"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def embedded_record(self) -> Path:
        """The embedded demo export folders filled so far (io/embedded.py): a deleted one is not filled again."""
        return self.root / "embedded.json"

    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow / 'mlflow.db'}"


def superseded(unified: Path | str, current: Path, hashes: dict | None = None) -> bool:
    """Whether a later unify made other data current than the unified version at `unified` (or than the data files'
    `hashes` recorded from it): the hashes differ. A later run on the same data writes a version of its own, which
    supersedes nothing."""
    if not current.exists():
        return False
    try:
        if hashes is None:
            if Path(unified).resolve() == current.resolve():
                return False
            hashes = json.loads((Path(unified) / "manifest.json").read_text()).get("hashes")
        now = json.loads((current / "manifest.json").read_text()).get("hashes")
    except (OSError, ValueError):
        return True  # a version that cannot be read (or was pruned) is not known to hold the same data
    return hashes != now


class Superseded(ValueError):
    """A stage of an older run, cleared or retried after a later run unified newer data. A ValueError, so the task
    fails at once: a retry meets the same newer data."""


def refuse_superseded(unified: Path | str | None, current: Path, stage: str, hashes: dict | None = None) -> None:
    """Raise Superseded when the unified version a run's stage works on is no longer the current data."""
    if unified and superseded(unified, current, hashes):
        raise Superseded(
            f"{stage}: this run's unified data ({unified}) is no longer current: a later run unified other data (or "
            "the version was removed since). A candidate judged on older data could be crowned over a champion "
            "trained on newer data (and on people who withdrew since); nothing done. Start a new run"
        )
