"""The model registry: one registered model per target platform, versions tagged with their provenance, and the
aliases `champion`, `previous_champion` and `challenger` (no stages)."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from transfer_rec.registry.tracking import RUN_KEY_TAG
from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.serving.withheld import WITHHELD_COUNT_TAG, WITHHELD_TAG, Withheld

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous_champion", "challenger"
# on the version a rollback restored: the version it replaced (the one the operator rolled back from)
ROLLED_BACK_TAG = "rollback.from"
# on the version a rollback is restoring, while its aliases move: the version it rolls back from
ROLLBACK_PENDING_TAG = "rollback.pending"


def registered_model_name(target: str) -> str:
    """One registered model per target platform."""
    return f"transfer_rec-{target}"


def alias_version(target: str, alias: str = CHAMPION):
    """The model version an alias points at, or None when the target has no registered model or the alias is unset.
    A registry that does not answer is raised, never taken for "no champion": publish would skip as if nothing had
    been promoted, a crowning would lose previous_champion, and evaluation would judge on floors alone."""
    client = MlflowClient()
    name = registered_model_name(target)
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (model.aliases or {}).get(alias)
    return None if version is None else client.get_model_version(name, str(version))


class ChampionUnloadable(ValueError):
    """A registered version whose model this code cannot load (its files damaged or missing, or written by code whose
    format this one no longer reads). A ValueError: retrying meets the same files."""

    def __init__(self, model: str, version: str, error: BaseException):
        self.version = version
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        self.reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        super().__init__(f"{model} v{version} cannot be loaded ({self.reason})")


def _transient(error: BaseException) -> bool:
    """An error that says the store or the machine failed for now, not the model's files: an unreachable registry
    or artifact store (MlflowException, connection errors: OSErrors other than a missing file; boto's errors), or
    memory. Those are retried; anything else loading a model raises (a damaged torch file, parquet or JSON, a format
    this code no longer reads) is the model's."""
    if isinstance(error, (mlflow.exceptions.MlflowException, MemoryError)):
        return True
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, IsADirectoryError)):
        return True
    if "allocate" in str(error) and isinstance(error, RuntimeError):  # torch's allocator out of memory
        return True
    return type(error).__module__.startswith(("botocore", "boto3", "urllib3", "requests"))


def champion_bundle(target: str, alias: str = CHAMPION) -> tuple[ModelBundle | None, str | None]:
    """The registry's current champion for a target (or the version another alias names), loaded as it is served,
    with its version. ChampionUnloadable when its files cannot be loaded."""
    version = alias_version(target, alias)
    if version is None:
        return None, None
    # by the version just read: the alias may move in between (a rollback), and the two must name one model
    name = registered_model_name(target)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
        return model.unwrap_python_model().bundle, str(version.version)
    except Exception as error:
        if _transient(error):
            raise
        raise ChampionUnloadable(name, str(version.version), error) from error


def register_candidate(target: str, model_uri: str, run_id: str, run_key: str):
    """The candidate's model version (registered once per pipeline run: a retried task finds its version)."""
    client = MlflowClient()
    name = registered_model_name(target)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=f"transfer-rec recommender for target platform {target}")
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.tags.get(RUN_KEY_TAG) == run_key:
            return version
    return mlflow.register_model(model_uri, name, tags={RUN_KEY_TAG: run_key, "source_run_id": run_id})


def run_key_versions(target: str, run_key: str) -> list[Any]:
    """The target's model versions registered by a run key (none while the target has no registered model)."""
    name = registered_model_name(target)  # an unknown name matches nothing; a registry outage is raised (retried)
    return list(MlflowClient().search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'"))


# MLflow keeps a version's description in a VARCHAR(5000) column: PostgreSQL and MySQL refuse a longer one (SQLite
# keeps it), and MLflow does not check first
DESCRIPTION_MAX = 5000


def tag(target: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    name = registered_model_name(target)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def describe(target: str, version: str, tags: dict[str, str], description: str) -> None:
    tag(target, version, tags)
    MlflowClient().update_model_version(registered_model_name(target), version, description=description)


def crown(target: str, version: str) -> str | None:
    """Make `version` the champion; the one it replaces becomes previous_champion. Returns that one's version."""
    client = MlflowClient()
    name = registered_model_name(target)
    current = alias_version(target)
    previous = current.version if current is not None else None
    if previous is not None and str(previous) == str(version):  # a retry after the crowning: the one it replaced
        again = alias_version(target, PREVIOUS)
        return again.version if again is not None else None
    if previous is not None:
        client.set_registered_model_alias(name, PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    return previous


def withhold(target: str, version: str, withheld: Path | None, run_id: str) -> str | None:
    """Name on model version `version` the people its server must stop answering from (a Withheld list at
    `withheld`, logged as an artifact of run `run_id`); None clears a list named before (they consented again, or
    their accounts are back). Returns the list's artifact URI."""
    client = MlflowClient()
    name = registered_model_name(target)
    if withheld is None:
        tags = client.get_model_version(name, version).tags or {}
        for key in (WITHHELD_TAG, WITHHELD_COUNT_TAG):
            if key in tags:
                client.delete_model_version_tag(name, version, key)
        return None
    # the artifact before the tag that names it, so a server never reads a URI with nothing behind it yet
    client.log_artifact(run_id, str(withheld), "serving")
    uri = f"runs:/{run_id}/serving/{Path(withheld).name}"
    count = len(Withheld.read(withheld).accounts)
    client.set_model_version_tag(name, version, WITHHELD_COUNT_TAG, str(count))
    client.set_model_version_tag(name, version, WITHHELD_TAG, uri)
    return uri


def mark_challenger(target: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(registered_model_name(target), CHALLENGER, version)


def rollback(target: str, restore: str | None = None) -> dict[str, Any]:
    """Move `champion` back to `previous_champion` (and the other way round). `restore`: the previous champion's
    version the caller checked; a different one now is refused (RollbackRefused), as is a rollback with nothing
    to return to."""
    client = MlflowClient()
    name = registered_model_name(target)
    previous = str(client.get_model_version_by_alias(name, PREVIOUS).version)
    current = str(client.get_model_version_by_alias(name, CHAMPION).version)
    if previous == current:
        # the registry moves one alias at a time: a rollback stopped between its two writes left both on the version
        # it restored, marked with the one it was rolling back from until both moved; finish it. Both on one version
        # without that mark (a crowning stopped between its writes) is nothing a rollback can undo.
        origin = client.get_model_version(name, current).tags.get(ROLLBACK_PENDING_TAG)
        if origin is None or origin == current:
            raise RollbackRefused(f"{name}: champion and previous_champion are both v{current}: nothing to return to")
        client.set_registered_model_alias(name, PREVIOUS, origin)
        client.delete_model_version_tag(name, current, ROLLBACK_PENDING_TAG)
        return {"model": name, "champion": current, "rolled_back_from": origin}
    if restore is not None and previous != str(restore):
        raise RollbackRefused(f"{name}: previous_champion moved to v{previous} while v{restore} was checked")
    # a mark a rollback stopped before removing (after both its writes) must not be taken for a half-done one later
    client.delete_model_version_tag(name, current, ROLLBACK_PENDING_TAG)
    client.set_model_version_tag(name, previous, ROLLED_BACK_TAG, current)
    client.set_model_version_tag(name, previous, ROLLBACK_PENDING_TAG, current)  # what a stopped rollback needs
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, PREVIOUS, current)
    client.delete_model_version_tag(name, previous, ROLLBACK_PENDING_TAG)
    return {"model": name, "champion": previous, "rolled_back_from": current}


def rollback_pending(target: str) -> bool:
    """Whether a rollback stopped between its two alias writes (both aliases on the version it restored)."""
    champion, previous = alias_version(target), alias_version(target, PREVIOUS)
    return (
        champion is not None
        and previous is not None
        and str(champion.version) == str(previous.version)
        and ROLLBACK_PENDING_TAG in (champion.tags or {})
    )


class RollbackRefused(RuntimeError):
    """A rollback that would put a model in front that it should not (or none at all)."""


SERVING_ROOTS = ["transfer_rec.serving.pyfunc"]
# What the served model imports (the serving modules above, and the pickled python_model), pinned to the versions
# installed here. Given explicitly: MLflow would otherwise infer them by loading the model in a subprocess, which
# cost ~8 s per candidate and found the same packages (plus two that torch and MLflow import only if present).
SERVING_PACKAGES = ("mlflow", "cloudpickle", "numpy", "pandas", "pyarrow", "scipy", "torch")


def serving_requirements() -> list[str]:
    """The served model's pip requirements: SERVING_PACKAGES at this environment's versions (no local build tags,
    so the CPU build's "2.13.0+cpu" is asked for as torch==2.13.0)."""
    from importlib.metadata import version

    return [f"{package}=={version(package).split('+', 1)[0]}" for package in SERVING_PACKAGES]


def log_candidate_model(bundle: ModelBundle, folder, staging: Path) -> str:
    """Log the candidate to the active MLflow run as a pyfunc model carrying only the code serving needs; returns
    its model URI."""
    from transfer_rec.registry.code import stage_code
    from transfer_rec.serving.pyfunc import SIGNATURE, TransferRecModel, input_example

    code = stage_code(SERVING_ROOTS, Path(staging) / uuid.uuid4().hex[:12])
    try:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TransferRecModel(),
            artifacts={"bundle": str(folder)},
            signature=SIGNATURE,
            input_example=input_example(bundle),
            code_paths=[str(code)],
            pip_requirements=serving_requirements(),
        )
    finally:
        shutil.rmtree(code.parent, ignore_errors=True)
    return info.model_uri
