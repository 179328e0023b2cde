"""Data-aware scheduling: a platform's ingest DAG announces a new validated batch (an Asset event that queues
`transfer_rec`), and announces the same data only once."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
URI = "transfer-rec://platform/village"


def _asset_events() -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.uri == URI)
            ).all()
        )


def _queued_for_training() -> int:
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(AssetDagRunQueue)
            .join(AssetModel, AssetDagRunQueue.asset_id == AssetModel.id)
            .where(AssetModel.uri == URI, AssetDagRunQueue.target_dag_id == "transfer_rec")
        )


def _unpause_training() -> None:
    """Write the DAG folder to the metadata DB (as `dag.test` does) and unpause transfer_rec: Airflow queues runs
    of unpaused DAGs only."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        sync_bag_to_db(
            BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
            bundle.name,
            bundle.version,
        )
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == "transfer_rec").values(is_paused=False))


def test_ingest_dag_announces_new_data_once_and_queues_training(pipeline_env, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    env = pipeline_env()
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("transfer_rec_ingest_village")
    _unpause_training()
    before = len(_asset_events())

    first = dag.test()
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    assert states == {"pull": "success", "validate": "success"}, states
    events = _asset_events()
    assert len(events) == before + 1 and events[-1].extra["batch_id"].startswith("ingest_")
    assert _queued_for_training() >= 1, "the new batch did not queue a transfer_rec run"
    batch = events[-1].extra["batch_id"]
    assert (env["state"] / "data_docs" / "village" / batch / "index.html").exists()

    # the same export again: validated, not announced, and its copy is not kept in landing
    second = dag.test()
    states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    assert states == {"pull": "success", "validate": "skipped"}, states
    assert len(_asset_events()) == before + 1
    landed = sorted(p.name for p in (env["state"] / "lake" / "landing" / "village").iterdir() if p.is_dir())
    assert landed == [batch]
