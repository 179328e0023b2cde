"""Where local state lives: one git-ignored folder holding the lake, models, MLflow and Airflow home."""

from __future__ import annotations

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
