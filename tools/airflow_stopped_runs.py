"""Mark the DAG runs `airflow dags test` left running as failed: `transfer-rec run` (make run) calls this after it
stops a run (Ctrl-C, SIGTERM, an error) and before `make airflow-ui` starts the scheduler.

`airflow dags test` runs a DAG in one process and writes its run and task instances to Airflow's database; stopped,
it leaves them "running". The scheduler never adopts task instances no scheduler queued, so it would continue the
stopped run's remaining tasks (training, promoting, publishing what the operator stopped), or hold it "running"
for good, and with max_active_runs=1 every later run would wait behind it. Airflow 3 has no CLI command that sets
a run's state, hence this script. It imports Airflow, so it lives outside the package.

    python tools/airflow_stopped_runs.py DAG_ID

Only runs triggered by `dags test` are touched (run type manual, triggered by test): a scheduled or UI-triggered run
is the scheduler's. Call it only when no `airflow dags test` of the DAG is running (transfer-rec run holds its run
lock while it calls it). Prints one line per run it failed.
"""

from __future__ import annotations

import sys

from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, State, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType
from sqlalchemy import select


def fail_stopped_runs(dag_id: str) -> list[str]:
    failed = []
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(
                DagRun.dag_id == dag_id,
                DagRun.state.in_([DagRunState.RUNNING, DagRunState.QUEUED]),
                DagRun.triggered_by == DagRunTriggeredByType.TEST,
            )
        ).all()
        for run in runs:
            for ti in run.get_task_instances(session=session):
                # a task that had not started stays unstarted: the failed run never schedules it
                if ti.state is not None and ti.state not in State.finished:
                    ti.set_state(TaskInstanceState.FAILED, session=session)
            run.set_state(DagRunState.FAILED)
            failed.append(run.run_id)
    return failed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for run_id in fail_stopped_runs(sys.argv[1]):
        print(f"{sys.argv[1]}: run {run_id} was stopped; marked failed")
