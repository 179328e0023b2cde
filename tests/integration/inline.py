"""Run the DAG's stages in order in this process (what `dag.test` runs, minus Airflow)."""

from __future__ import annotations

from transfer_rec.stages import pipeline


def run_inline(run_key: str, target: str = "village", **params) -> dict:
    """The DAG's stages in order, in this process (what `dag.test` runs, minus Airflow)."""
    run = pipeline.plan({"run_key": run_key, **params}, airflow_run_id=run_key)
    validated = [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]]
    features = pipeline.build_features(run, pipeline.unify(run, validated))
    pretrained = pipeline.pretrain(run, features)
    candidate = pipeline.finetune(run, target, features, pretrained)
    evaluation = pipeline.evaluate(run, candidate, features)
    decision = pipeline.promote(run, evaluation)
    published = pipeline.publish(run, decision, features)
    return {"evaluation": evaluation, "decision": decision, "published": published, "features": features}
