from transfer_rec.config import GateConfig
from transfer_rec.stages.promote import gate


def metrics(cand, target_only=0.1, pop=0.05, champion=None, retention=0.6):
    m = {
        "candidate": {"ndcg": cand, "retention": retention},
        "target_only": {"ndcg": target_only},
        "popularity": {"ndcg": pop},
    }
    if champion is not None:
        m["champion"] = {"ndcg": champion, "retention": retention}
    return m


def test_first_model_is_judged_on_floors_and_baselines():
    assert gate(metrics(0.2), GateConfig()).promote
    decision = gate(metrics(0.08, target_only=0.1), GateConfig())
    assert not decision.promote and any("FAIL" in r and "target-only" in r for r in decision.reasons)


def test_worse_than_champion_beyond_margin_is_rejected_within_margin_is_promoted():
    config = GateConfig(ndcg_margin=0.01)
    assert not gate(metrics(0.20, champion=0.22), config).promote
    assert gate(metrics(0.215, champion=0.22), config).promote


def test_floors_and_overrides():
    assert not gate(metrics(0.2, retention=0.1), GateConfig(min_retention=0.3)).promote
    assert gate(metrics(0.01, target_only=0.5), GateConfig(), override="promote").promote
    assert not gate(metrics(0.5), GateConfig(), override="reject").promote


def test_the_model_card_says_whether_the_gate_passed_or_an_operator_pushed_the_version_through():
    from transfer_rec.stages.promote import model_card

    evaluation = {"target": "shop", "k": 10, "test_users": 90, "metrics": {"candidate": {"ndcg": 0.01, "recall": 0.02}}}
    passed = model_card(evaluation, gate(metrics(0.5), GateConfig()), "r1")
    assert "**Gate: passed**: champion once" in passed and "FAIL" not in passed
    pushed = model_card(evaluation, gate(metrics(0.01, target_only=0.5), GateConfig(), override="promote"), "r1")
    assert "**Gate: overridden by hand**: champion once" in pushed and "- FAIL: " in pushed
    refused = model_card(evaluation, gate(metrics(0.5), GateConfig(), override="reject"), "r1")
    assert "**Gate: not promoted**" in refused and "- override: rejected by manual override" in refused


def test_paired_bound_decides_against_the_champion():
    config = GateConfig(ndcg_margin=0.01, retention_margin=0.01)
    # equal point estimates, but the paired lower bound says the candidate may be 3 points worse: rejected
    m = metrics(0.22, champion=0.22)
    assert not gate(m, config, paired={"ndcg": -0.03, "retention": 0.0}).promote
    assert gate(m, config, paired={"ndcg": -0.005, "retention": -0.005}).promote
    reasons = gate(m, config, paired={"ndcg": -0.03, "retention": 0.0}).reasons
    assert any(r.startswith("FAIL: ndcg vs champion") and "lower bound" in r for r in reasons)


def test_a_candidate_equal_to_the_champion_for_every_user_is_no_change():
    decision = gate(metrics(0.22, champion=0.22), GateConfig(), same_as_champion=True)
    assert not decision.promote and any(r.startswith("no change") for r in decision.reasons)
    # equal means, different users: another model, judged by the margins as usual
    assert gate(metrics(0.22, champion=0.22), GateConfig()).promote


def test_a_champion_holding_withdrawn_people_gives_way_to_any_candidate_that_meets_floors_and_baselines():
    config = GateConfig(ndcg_margin=0.01)
    worse = metrics(0.15, champion=0.22)
    assert not gate(worse, config).promote
    decision = gate(worse, config, withdrawn=3)
    assert decision.promote
    assert any(r.startswith("info (not required), worse: ndcg") for r in decision.reasons)
    assert any("holds 3 account(s) of people who have since withheld consent" in r for r in decision.reasons)
    # "no change" does not keep it either: the champion still holds them
    assert gate(metrics(0.22, champion=0.22), config, same_as_champion=True, withdrawn=1).promote
    # a candidate below the floors or the baselines is not promoted for it: the champion stays, and the reason says so
    failing = gate(metrics(0.08, target_only=0.1, champion=0.22), config, withdrawn=3)
    assert not failing.promote and any("the champion stays until one does" in r for r in failing.reasons)
    assert gate(metrics(0.08, target_only=0.1, champion=0.22), config, "reject", withdrawn=3).promote is False


def test_gate_floors_per_target_override_the_defaults():
    config = GateConfig.model_validate({"min_retention": 0.2, "targets": {"ml-1m": {"min_retention": 0.1}}})
    low = metrics(0.3, retention=0.165)
    assert not gate(low, config.for_target("ml-100k")).promote
    assert gate(low, config.for_target("ml-1m")).promote
    assert config.for_target("ml-1m").min_ndcg == config.min_ndcg, "only the floors given are replaced"


def test_same_recommendations_compares_ranked_top_k_not_scores():
    import numpy as np
    import scipy.sparse as sp

    from transfer_rec.metrics.ranking import top_k
    from transfer_rec.stages.evaluate import same_recommendations

    rng = np.random.default_rng(0)
    a = rng.random((5, 20))
    seen = sp.csr_matrix((np.ones(3), ([0, 1, 2], [3, 4, 5])), shape=(5, 20))
    candidates = np.ones(20, dtype=bool)

    def lists(scores):
        return top_k(scores, 10, seen, candidates)

    assert same_recommendations(lists(a), lists(a * 1.01 + 1e-7)), "scores differ, lists do not"
    b = a.copy()
    b[3, np.argsort(-a[3])[0]] = -1  # user 3 (nothing seen) loses their first item
    assert not same_recommendations(lists(a), lists(b))


def test_users_new_to_the_target_are_judged_against_the_champion_on_their_own():
    config = GateConfig(ndcg_margin=0.01, retention_margin=0.01)
    m = metrics(0.22, champion=0.22)
    m["candidate"]["ndcg_new_to_target"], m["champion"]["ndcg_new_to_target"] = 0.30, 0.45
    # as good overall, much worse for newcomers: refused, and the reason names them
    decision = gate(m, config, paired={"ndcg": 0.0, "retention": 0.0, "ndcg_new_to_target": -0.12})
    assert not decision.promote
    assert any(r.startswith("FAIL") and "new to the target" in r for r in decision.reasons)
    assert gate(m, config, paired={"ndcg": 0.0, "retention": 0.0, "ndcg_new_to_target": -0.005}).promote
    # judged when there are enough of them to judge on
    assert not gate(
        m, config, paired={"ndcg": 0.0, "retention": 0.0, "ndcg_new_to_target": -0.12}, newcomers=20
    ).promote


def test_a_few_users_new_to_the_target_are_reported_not_judged():
    config = GateConfig(ndcg_margin=0.01, retention_margin=0.01)
    m = metrics(0.27, champion=0.22)
    m["candidate"]["ndcg_new_to_target"], m["champion"]["ndcg_new_to_target"] = 0.30, 0.31
    # one newcomer: the bound is that one person's difference, and it would veto a candidate better overall
    decision = gate(m, config, paired={"ndcg": 0.04, "retention": 0.0, "ndcg_new_to_target": -0.01}, newcomers=1)
    assert decision.promote, decision.reasons
    assert any("new to the target" in r and "1 users, fewer than 20" in r for r in decision.reasons)


def test_the_model_card_says_what_the_linked_part_does():
    from transfer_rec.stages.promote import linked_line

    line = linked_line({"newcomers_from": ["books", "films"], "warm_from": [], "answers_warm": False, "people": 1192})
    assert "1,192" in line and "on books, films" in line and "not better on valid" in line
    none = linked_line({"newcomers_from": [], "warm_from": ["books"], "answers_warm": True, "people": 5})
    assert "no source" in none and "also from their source histories" in none
    content = linked_line(
        {"newcomers_from": ["books"], "newcomers_content_weight": 16.0, "answers_warm": False, "people": 9}
    )
    assert "on books (their items and what the items are about: content weight 16)" in content


def test_the_summary_sets_newcomers_against_popularity_by_sources_linked():
    from transfer_rec.stages.promote import newcomers_line

    def row(segment, contender, mean, users=40):
        return {"segment": segment, "contender": contender, "metric": "ndcg", "users": users, "mean": mean}

    segments = [
        row("new to the target", "candidate", 0.52),
        row("new to the target", "popularity", 0.45),
        row("new to the target, on 2 sources", "candidate", 0.63, 12),
        row("new to the target, on 2 sources", "popularity", 0.47, 12),
        row("new (<=20)", "candidate", 0.30),
        {**row("new to the target", "candidate", 0.9), "metric": "recall"},
    ]
    line = newcomers_line(segments, 10)
    assert line == (
        "new to the target, NDCG@10 of the candidate: all (40): 0.520 vs popularity 0.450; "
        "on 2 sources (12): 0.630 vs popularity 0.470"
    )
    assert newcomers_line([row("new (<=20)", "candidate", 0.3)], 10) is None


def test_a_model_that_cannot_be_loaded_is_told_from_a_store_that_failed_for_now():
    import json

    import mlflow
    import pyarrow as pa

    from transfer_rec.registry.models import _transient

    broken = [
        pa.ArrowInvalid("Parquet magic bytes not found in footer"),
        json.JSONDecodeError("Expecting value", "", 0),
        FileNotFoundError("items.parquet"),
        TypeError("__init__() got an unexpected keyword argument 'kernel'"),
        RuntimeError("PytorchStreamReader failed reading zip archive"),
    ]
    failing_for_now = [
        ConnectionError("connection refused"),
        TimeoutError("timed out"),
        mlflow.exceptions.MlflowException("API request failed"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ]
    assert [_transient(e) for e in broken] == [False] * len(broken)
    assert [_transient(e) for e in failing_for_now] == [True] * len(failing_for_now)
