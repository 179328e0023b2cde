"""The run's report as `make run` and `transfer-rec summary` print it, for targets that failed at each stage."""

import json
from datetime import UTC, datetime

from transfer_rec import cli
from transfer_rec.io.state import StateLayout


def test_the_report_names_each_failed_target_and_its_stage_beside_the_others(tmp_path, capsys):
    layout = StateLayout(tmp_path)
    layout.reports.mkdir(parents=True)
    evaluated = {"k": 10, "test_users": 80, "metrics": {"candidate": {"ndcg": 0.31}}, "report": None}
    decision = {"model": "transfer_rec-c", "version": 3, "promoted": True, "reasons": ["pass: ndcg"]}
    published = {"published": True, "rows": 800, "users": 80, "path": "var/recommendations/d", "model_version": "2"}
    report = {
        "run_key": "r1",
        "platforms": {},
        "pretrain": [],
        "targets": {
            "a": {"failed_at": "finetune"},
            "b": {**evaluated, "decision": None, "published": None, "failed_at": "promote"},
            "c": {**evaluated, "decision": decision, "published": None, "failed_at": "publish"},
            "d": {**evaluated, "decision": {**decision, "model": "transfer_rec-d"}, "published": published},
        },
    }
    (layout.reports / "latest.json").write_text(json.dumps(report))
    cli.summary(layout)
    out = capsys.readouterr().out
    # when the report was written: a run that failed before its report leaves the previous one in place
    written = datetime.fromtimestamp((layout.reports / "latest.json").stat().st_mtime, UTC)
    assert f"transfer-rec run r1 (report written {written:%Y-%m-%d %H:%M} UTC)" in out
    blocks = {b.split(":", 1)[0]: b for b in out.split("\ntarget ")[1:]}
    assert blocks["a"].startswith("a: FAILED at finetune") and "failures.log" in blocks["a"]
    assert "decision: FAILED at promote" in blocks["b"] and "published" not in blocks["b"]
    assert "transfer_rec-c v3 PROMOTED" in blocks["c"] and "published: FAILED at publish" in blocks["c"]
    # by whose lists: after "not promoted" they are the earlier champion's
    assert "published: 800 recommendations by champion v2 for 80 users" in blocks["d"] and "FAILED" not in blocks["d"]
