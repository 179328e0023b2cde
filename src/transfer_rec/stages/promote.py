"""Stage 8, promote: register the candidate and move the `champion` alias only when the gate passes."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transfer_rec.config import GateConfig
from transfer_rec.io.state import StateLayout, refuse_superseded
from transfer_rec.manifests import Decision, Evaluation
from transfer_rec.metrics.segments import NEW_TO_TARGET
from transfer_rec.ops.alerts import record_failure
from transfer_rec.registry import models as registry
from transfer_rec.registry import tracking
from transfer_rec.stages.evaluate import withdrawn_accounts

log = logging.getLogger(__name__)

Override = Literal["none", "promote", "reject"]


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


# The model-version tag holding the sha256 of the inputs (data files' hashes and resolved config) it was trained on.
INPUTS_TAG = "inputs.fingerprint"
# On a candidate that did not replace a champion holding people who have since withheld consent: how many accounts
# of theirs the champion still holds (its server stops answering from them, serving/withheld.py, but its weights were
# trained on them until a version replaces it).
WITHDRAWN_TAG = "gate.champion_withdrawn"
# ... and which champion that was: the alert is repeated only while that version serves
WITHDRAWN_OF_TAG = "gate.champion_withdrawn.version"
# a version's gate.decision while its crowning is under way (passed the gate; not champion until it reads "promoted")
CROWNING = "crowning"
# The metrics a model version's tags show (all of them are in its model card and provenance.json).
HEADLINE_METRICS = ("ndcg", "recall", "retention")


def gate(
    metrics: dict[str, dict[str, float]],
    config: GateConfig,
    override: Override = "none",
    paired: dict[str, float] | None = None,
    same_as_champion: bool = False,
    withdrawn: int = 0,
    newcomers: int | None = None,
    unloadable: str | None = None,
) -> GateDecision:
    """Decide on the candidate from held-out metrics of candidate, baselines and (if any) the champion.

    `paired` holds the paired-bootstrap lower bounds of candidate minus champion (`ndcg`, `retention`); without
    it the point estimates are compared. `same_as_champion`: the candidate gives every user the champion's top-K in
    the same order, so promoting it would only add a version ("no change"). `withdrawn`: accounts the champion
    holds (a target history, a link) whose people have since withheld consent. Such a champion may not stay for
    being as good: any candidate that meets the floors and beats the baselines replaces it (it holds none of them,
    unification left them out), and the comparisons with the champion are reported, not required. `newcomers`: the
    test users new to the target; fewer than FEW_USERS are reported, not judged on their own (a bound over three
    people vetoes any change to them, whatever the candidate wins elsewhere). None (an older evaluation): judged.
    `unloadable`: the champion ("v3: why") could not be loaded, so the candidate was compared with nothing: it is
    not promoted by the gate (it may be worse than what serves), only by an operator's override.
    """
    cand = metrics["candidate"]
    m = config.metric
    checks = [
        (cand["ndcg"] >= config.min_ndcg, f"NDCG {cand['ndcg']:.4f} vs floor {config.min_ndcg}"),
        (
            cand["retention"] >= config.min_retention,
            f"retention (next period) {cand['retention']:.4f} vs floor {config.min_retention}",
        ),
        (cand[m] > metrics["target_only"][m], f"{m} {cand[m]:.4f} vs target-only {metrics['target_only'][m]:.4f}"),
        (cand[m] > metrics["popularity"][m], f"{m} {cand[m]:.4f} vs popularity {metrics['popularity'][m]:.4f}"),
    ]
    required = len(checks)
    if "champion" in metrics:
        champ = metrics["champion"]
        for name, margin in (("ndcg", config.ndcg_margin), ("retention", config.retention_margin)):
            if paired is not None:
                bound = paired[name]
                checks.append(
                    (
                        bound >= -margin,
                        f"{name} vs champion: {cand[name]:.4f} vs {champ[name]:.4f}, paired "
                        f"{config.confidence:.0%} lower bound of the difference {bound:+.4f} (margin {margin})",
                    )
                )
            else:
                checks.append(
                    (
                        cand[name] >= champ[name] - margin,
                        f"{name} {cand[name]:.4f} vs champion {champ[name]:.4f} (margin {margin})",
                    )
                )
        new = "ndcg_new_to_target"
        few = newcomers is not None and newcomers < FEW_USERS
        if paired is not None and paired.get(new) is not None and champ.get(new) is not None and few:
            checks.append(
                (
                    True,
                    f"NDCG of users new to the target vs champion: {cand[new]:.4f} vs {champ[new]:.4f} over "
                    f"{newcomers} users, fewer than {FEW_USERS}: reported, not judged on its own",
                )
            )
        elif paired is not None and paired.get(new) is not None and champ.get(new) is not None:
            checks.append(
                (
                    paired[new] >= -config.ndcg_margin,
                    f"NDCG of users new to the target vs champion: {cand[new]:.4f} vs {champ[new]:.4f}, paired "
                    f"{config.confidence:.0%} lower bound of the difference {paired[new]:+.4f} "
                    f"(margin {config.ndcg_margin})",
                )
            )
    elif unloadable is not None:
        checks.append(
            (
                False,
                f"champion {unloadable} could not be loaded, so the candidate was compared with floors and baselines "
                "only: review it against what serves and trigger with gate_override=promote to replace the champion",
            )
        )
    else:
        checks.append((True, "no champion yet: compared with floors and baselines only"))
    if "champion" in metrics and withdrawn:
        reasons = [("pass: " if ok else "FAIL: ") + text for ok, text in checks[:required]]
        reasons += [
            ("info (not required): " if ok else "info (not required), worse: ") + t for ok, t in checks[required:]
        ]
        passed = all(ok for ok, _ in checks[:required])
        reasons.append(
            f"{'pass' if passed else 'FAIL'}: the champion holds {withdrawn} account(s) of people who have since "
            "withheld consent or were deleted; it is replaced by a candidate that meets the floors and beats the "
            "baselines" + ("" if passed else ", which this one does not: the champion stays until one does")
        )
        return _overridden(GateDecision(passed, reasons), override)
    reasons = [("pass: " if ok else "FAIL: ") + text for ok, text in checks]
    passed = all(ok for ok, _ in checks)
    if "champion" in metrics and same_as_champion:
        passed = False
        reasons.append("no change: the candidate recommends the champion's top-K, in the same order, to every user")
    return _overridden(GateDecision(passed, reasons), override)


OVERRIDE_PROMOTED, OVERRIDE_REJECTED = "override: promoted by manual override", "override: rejected by manual override"


def _overridden(decision: GateDecision, override: Override) -> GateDecision:
    if override == "promote":
        return GateDecision(True, decision.reasons + [OVERRIDE_PROMOTED])
    if override == "reject":
        return GateDecision(False, decision.reasons + [OVERRIDE_REJECTED])
    return decision


def linked_line(linked: dict[str, Any]) -> str:
    """One sentence on the linked part (recommender/linked.py) of a model, for the model card and the run summary."""
    new = ", ".join(linked["newcomers_from"]) or "no source (none helped on simulated newcomers)"
    if linked.get("newcomers_content_weight"):
        new += f" (their items and what the items are about: content weight {linked['newcomers_content_weight']:g})"
    warm = (
        "also from their source histories (better on valid)"
        if linked["answers_warm"]
        else "from their target history (the linked part was not better on valid)"
    )
    return (
        f"Linked people ({linked['people']:,} known on the sources by link id): users new to the target are "
        f"recommended from their histories on {new}; users with a target history {warm}."
    )


def newcomers_line(segments: list[dict[str, Any]], k: int) -> str | None:
    """The candidate's NDCG for people new to the target against popularity (the best a target alone can do for
    them), overall and by how many sources they are linked on; None when the evaluation has no such users."""
    ndcg = {
        (r["segment"], r["contender"]): r
        for r in segments
        if r["metric"] == "ndcg" and r["segment"].startswith(NEW_TO_TARGET) and r["users"]
    }
    if (NEW_TO_TARGET, "candidate") not in ndcg:
        return None
    parts = []
    for (segment, contender), row in ndcg.items():
        if contender != "candidate":
            continue
        popular = ndcg.get((segment, "popularity"))
        label = segment.removeprefix(NEW_TO_TARGET).lstrip(", ") or "all"
        parts.append(
            f"{label} ({row['users']}): {row['mean']:.3f}"
            + (f" vs popularity {popular['mean']:.3f}" if popular else "")
        )
    return f"new to the target, NDCG@{k} of the candidate: " + "; ".join(parts)


def _cell(value: float | None, interval: Any = None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval and interval[0] is not None:
        text += f" ({interval[0]:.{digits}f}-{interval[1]:.{digits}f})"
    return text


# A segment of fewer users than this has a CI too wide to compare contenders on; the card marks it.
FEW_USERS = 20
# MLflow draws a description's tables with neither borders nor cell padding, so adjacent numbers ran together
# ("0.3150.000"); an em space ends every cell, written as an entity because its Markdown renderer trims a literal
# one.
CELL_END = "&emsp;"


def _row(*cells: Any) -> str:
    """One Markdown table row of the model card."""
    return "| " + " | ".join(f"{cell}{CELL_END}" for cell in cells) + " |"


def _rule(columns: int) -> str:
    return "|" + "---|" * columns


def model_card(evaluation: dict[str, Any], decision: GateDecision, run_key: str) -> str:
    """A short, reviewable description of a model version: data, metrics with CIs vs champion and baselines, metrics
    by user segment, and the gate's decision. Narrow tables with short cells: MLflow renders them without borders."""
    k = evaluation["k"]
    cis = evaluation.get("ci", {})
    lines = [
        f"transfer-rec model for target platform **{evaluation['target']}**, pipeline run `{run_key}`.",
        "",
        f"Held-out evaluation: {evaluation['test_users']} target users, full ranking of the target's items, "
        f"history = train split, train and valid items masked, K = {k}.",
    ]
    if "retention_users" in evaluation:
        lines.append(
            f"Retention: {evaluation['retention_users']} users with a next-period hold-out (each user's last "
            f"{evaluation['time_holdout']:.0%} of interactions by timestamp); new users have at most "
            f"{evaluation['new_user_max_history']} history items."
        )
    weights = evaluation.get("source_weights") or {}
    if weights:
        lines.append(
            "Sources (weight in the item-item prior, chosen on the target's validation split; 0: left out as no "
            "help): " + ", ".join(f"{name} {weight:g}" for name, weight in weights.items()) + "."
        )
    linked = evaluation.get("linked")
    if linked:
        lines.append(linked_line(linked))
    metrics = evaluation["metrics"]
    lines += [
        "",
        "**Accuracy and retention** (95% bootstrap CIs over users in brackets)",
        "",
        _row("model", f"NDCG@{k}", f"Recall@{k}", "retention", "retention, new users"),
        _rule(5),
    ]
    for name, m in metrics.items():
        ci = cis.get(name, {})
        lines.append(
            _row(
                name,
                _cell(m["ndcg"], ci.get("ndcg")),
                _cell(m["recall"], ci.get("recall")),
                _cell(m.get("retention"), ci.get("retention")),
                _cell(m.get("retention_new")),
            )
        )
    lines += ["", "**Beyond accuracy**", "", _row("model", f"coverage@{k}", f"diversity@{k}", f"novelty@{k}"), _rule(4)]
    for name, m in metrics.items():
        lines.append(_row(name, _cell(m.get("coverage")), _cell(m.get("diversity")), _cell(m.get("novelty"), digits=2)))
    paired = evaluation.get("paired_vs_champion")
    if paired:
        lines += [
            "",
            "Candidate minus champion, paired one-sided lower bounds: "
            + ", ".join(f"{m} {v:+.4f}" for m, v in paired.items())
            + ".",
        ]
    lines += _segment_tables(evaluation.get("segments", []), k)
    hashes = evaluation.get("data", {}).get("hashes", {})
    if hashes:
        lines += ["", "**Data** (first 12 hex digits of each pulled file's sha256; all of them in provenance.json)", ""]
        lines += [
            f"- {platform}: "
            + (
                ", ".join(f"{f} `{h[:12]}`" for f, h in sorted(files.items()))
                if len(files) <= tracking.FILES_LISTED
                else f"{len(files)} files (an incremental platform's partitions), "
                f"digest `{platform_digest(files)[:12]}`"
            )
            for platform, files in sorted(hashes.items())
        ]
    # written before the champion alias moves (a crowning can fail after it): passed (or pushed through by an
    # operator, whatever the checks below say), and where to read whether the version is champion
    verdict = "**Gate: not promoted**"
    if decision.promote:
        verdict = "**Gate: overridden by hand**" if OVERRIDE_PROMOTED in decision.reasons else "**Gate: passed**"
        verdict += ": champion once its `champion` alias points here (`gate.decision` then reads `promoted`)"
    lines += ["", verdict, ""]
    lines += [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines)


CARD_FILE = "model_card.md"


def _record(
    report: dict[str, Any],
    decision: GateDecision,
    run_key: str,
    run_id: str,
    target: str,
    version: str,
    tags: dict[str, str],
) -> None:
    """The gate's record of a version: provenance.json and the whole model card on its run, its tags, and the card
    as its description."""
    tracking.log_dict(run_id, provenance(report, decision, run_key), "provenance.json")
    card = model_card(report, decision, run_key)
    tracking.log_text(run_id, card, CARD_FILE)
    registry.describe(target, version, tags, fit_card(card, f"{CARD_FILE} on run {run_id}"))


def fit_card(card: str, where: str, limit: int = registry.DESCRIPTION_MAX) -> str:
    """The model card as a version's description within the registry's `limit`: past it, the tables before the
    gate's decision lose their last lines (segments, data) and a line says where the whole card is; the headline
    metrics stay as long as they fit beside the decision and that line, and the decision stays (cut at the limit
    only if it alone passes it)."""
    if len(card) <= limit:
        return card
    lines = card.split("\n")
    gate = max((i for i, line in enumerate(lines) if line.startswith("**Gate:")), default=len(lines))
    head, tail = lines[:gate], lines[gate:]
    note = ["", f"*Cut to the registry's {limit:,} characters: the whole card is {where}.*", ""]
    while head and len("\n".join(head + note + tail)) > limit:
        head.pop()
    return "\n".join(head + note + tail)[:limit]


def _segment_tables(segments: list[dict[str, Any]], k: int) -> list[str]:
    """One table per metric (NDCG, retention): a row per user segment, a column per contender; segments of fewer
    than FEW_USERS users are marked, not hidden."""
    rows = [r for r in segments if r["metric"] in ("ndcg", "retention") and r["segment"] != "all" and r["users"]]
    if not rows:
        return []
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    lines = [
        "",
        "By user segment (train-history length; where people are linked, also the sources they are linked on). "
        f"Marked *: fewer than {FEW_USERS} users, too few to compare on.",
    ]
    for metric, title in (("ndcg", f"NDCG@{k}"), ("retention", "retention (next period)")):
        table = {(r["segment"], r["contender"]): r for r in rows if r["metric"] == metric}
        if not table:
            continue
        lines += ["", _row(f"segment ({title})", "users", *contenders), _rule(2 + len(contenders))]
        for segment in dict.fromkeys(s for s, _ in table):
            users = next(table[(segment, c)]["users"] for c in contenders if (segment, c) in table)
            mark = "*" if users < FEW_USERS else ""
            cells = [f"{table[(segment, c)]['mean']:.3f}" if (segment, c) in table else "n/a" for c in contenders]
            lines.append(_row(f"{segment}{mark}", users, *cells))
    return lines


def platform_digest(files: dict[str, str]) -> str:
    """One sha256 for a platform's data: over its files' names and sha256s (each file's is in provenance.json)."""
    text = "\n".join(f"{file}={digest}" for file, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def data_tags(evaluation: dict[str, Any]) -> dict[str, str]:
    """Model-version tags naming the exact data, one per platform: the digest of its pulled files."""
    hashes = evaluation.get("data", {}).get("hashes", {})
    return {f"data.{platform}.sha256": platform_digest(files) for platform, files in sorted(hashes.items())}


def provenance(evaluation: dict[str, Any], decision: GateDecision, run_key: str) -> dict[str, Any]:
    """The long record a version's few tags point to (`provenance.json` on its run): every pulled file's sha256,
    the unified and features versions it was trained on, every test metric and the gate's reasons."""
    return {
        "run_key": run_key,
        "data": evaluation.get("data", {}),
        "metrics": evaluation.get("metrics", {}),
        "gate": {"promoted": decision.promote, "reasons": decision.reasons},
    }


def promote(
    evaluation: Evaluation,
    config: GateConfig,
    layout: StateLayout,
    run_key: str,
    override: Override = "none",
    dry_run: bool = False,
    inputs: str | None = None,
) -> Decision:
    """Register the candidate (once per run), apply the gate, move aliases, record the decision on the version
    (`inputs`: the fingerprint of the data and config it was trained on, so an identical later run can skip). A dry
    run's version is registered and tagged `dry_run`, and moves no alias."""
    tracking.configure(layout)
    target = evaluation.target
    report = json.loads(Path(evaluation.report).read_text())
    # by the data files' hashes evaluation recorded: the unified version itself may have been pruned since
    data = report.get("data", {})
    refuse_superseded(data.get("unified"), layout.unified / "current", f"promote {target}", data.get("hashes"))
    decision = gate(
        evaluation.metrics,
        config,
        override,
        evaluation.paired_vs_champion,
        evaluation.same_as_champion,
        evaluation.champion_withdrawn,
        evaluation.new_to_target_users,
        f"v{evaluation.champion_version} ({evaluation.champion_unloadable})"
        if evaluation.champion_unloadable
        else None,
    )
    if dry_run:
        decision = GateDecision(False, decision.reasons + ["dry run: never promotes"])
    candidate = evaluation.candidate
    version = registry.register_candidate(target, candidate.model_uri, candidate.run_id, run_key)
    if not decision.promote:
        now = registry.alias_version(target)
        if now is not None and str(now.version) == str(version.version):
            # the run key's version was crowned by an earlier attempt and is serving: a later trigger of the same
            # run key with a dry run or a rejecting override must not write "rejected" or move challenger onto it
            # (a rollback or the next run's gate is how a champion leaves)
            reasons = decision.reasons + [
                f"v{version.version} is champion already (crowned by an earlier run of run key {run_key}): its "
                "record and aliases stay as they are"
            ]
            log.info("gate %s v%s: %s", registry.registered_model_name(target), version.version, reasons[-1])
            return Decision(
                target=target,
                model=registry.registered_model_name(target),
                version=str(version.version),
                promoted=False,
                previous_champion=None,
                reasons=reasons,
            )
    champion = _refuse_a_moved_champion(evaluation, str(version.version)) if decision.promote else None
    # "crowning" until the champion alias has moved: a crowning that fails on every retry leaves a version that
    # passed the gate but is not champion, which must not read "promoted" (a retry after the crowning finds it
    # champion already)
    stays_withdrawn = not decision.promote and not dry_run and bool(evaluation.champion_withdrawn)
    if not decision.promote:
        state = "rejected"
    else:
        state = "promoted" if champion == str(version.version) else CROWNING
    # few tags a person can read on the version's page; the long record is provenance.json on the source run
    metrics = evaluation.metrics["candidate"]
    tags = {
        "gate.decision": state,
        "gate.reasons": " | ".join(decision.reasons),
        "gate.override": override,
        "source_run_id": candidate.run_id,
        **{f"test.{m}": f"{metrics[m]:.4f}" for m in HEADLINE_METRICS if metrics.get(m) is not None},
        **data_tags(report),
        # no fingerprint when the champion could not be loaded: the rejection is no verdict on these inputs, so the
        # next run on them retrains and tries the champion again (a store that failed for a moment may load it)
        **({INPUTS_TAG: inputs} if inputs and not evaluation.champion_unloadable else {}),
        **({"dry_run": "true"} if dry_run else {}),
        **(
            {WITHDRAWN_TAG: str(evaluation.champion_withdrawn), WITHDRAWN_OF_TAG: str(evaluation.champion_version)}
            if stays_withdrawn
            else {}
        ),
    }
    _record(report, decision, run_key, candidate.run_id, target, str(version.version), tags)
    previous = None
    if decision.promote:
        # again, just before: the tags and description above took a few registry calls, a rollback may have come
        try:
            _refuse_a_moved_champion(evaluation, str(version.version))
        except ChampionMoved as moved:  # neither the version nor its run may say it was promoted
            refused = GateDecision(False, decision.reasons + [str(moved)])
            tags.update({"gate.decision": "rejected", "gate.reasons": " | ".join(refused.reasons)})
            _record(report, refused, run_key, candidate.run_id, target, str(version.version), tags)
            raise
        previous = registry.crown(target, version.version)
        tags["gate.decision"] = "promoted"
        registry.tag(target, str(version.version), {"gate.decision": "promoted"})
    elif not dry_run:  # a dry run's version is there to be looked at; it takes no alias from a real candidate
        registry.mark_challenger(target, version.version)
    if not decision.promote and evaluation.champion_version and not evaluation.champion_unloadable:
        # the champion keeps serving (a dry run's too): its servers stop answering from the people it holds who
        # withdrew since, or answer from them again if they came back
        withheld = report.get("champion_withheld")
        registry.withhold(
            target,
            str(evaluation.champion_version),
            Path(withheld) if withheld else None,
            evaluation.run_id or candidate.run_id,
        )
    name = registry.registered_model_name(target)
    if stays_withdrawn:
        record_failure(withdrawn_alert(name, evaluation.champion_version, evaluation.champion_withdrawn), layout)
    if evaluation.champion_unloadable and not decision.promote and not dry_run:
        record_failure(
            f"ATTENTION {name}: champion v{evaluation.champion_version} cannot be loaded "
            f"({evaluation.champion_unloadable}), so no candidate can be compared with it and none is promoted by the "
            "gate; publishing with it fails too. Review the candidate and trigger with gate_override=promote",
            layout,
        )
    for line in decision.reasons:
        log.info("gate %s v%s: %s", name, version.version, line)
    log.info("gate %s v%s: %s", name, version.version, tags["gate.decision"].upper())
    return Decision(
        target=target,
        model=name,
        version=str(version.version),
        promoted=decision.promote,
        previous_champion=previous,
        reasons=decision.reasons,
    )


def withdrawn_alert(model: str, champion: str | None, accounts: int | str) -> str:
    """The operator's line when no candidate replaced a champion holding people who have since withheld consent: a
    rejection like any other would leave it serving their histories, unnoticed, for as long as nothing improves."""
    return (
        f"ATTENTION {model}: champion v{champion} holds {accounts} account(s) of people who have since withheld "
        "consent or were deleted, and no candidate met the gate's floors and baselines to replace it: servers that "
        "follow it no longer answer from their histories or links (its serving.withheld list), but its weights "
        "were trained on them. Fix what fails the gate (its reasons are on the rejected version), or review and "
        "trigger with gate_override=promote"
    )


class ChampionMoved(ValueError):
    """The champion alias moved between evaluation and promotion (a rollback or another run's promotion). A
    ValueError, so the task fails at once (pipeline.DETERMINISTIC): a retry meets the same champion."""


def _refuse_a_moved_champion(evaluation: Evaluation, candidate_version: str) -> str | None:
    """The gate compared the candidate with the champion evaluation saw; crowning it over another one would put a
    model in front that was never measured against the one it replaces. A retry after this run crowned the
    candidate finds the candidate itself, and goes on. Returns the champion's version now."""
    now = registry.alias_version(evaluation.target)
    current = str(now.version) if now is not None else None
    if now is not None and (now.tags or {}).get(registry.ROLLED_BACK_TAG) == candidate_version:
        # the champion evaluation saw is back in front because an operator rolled back from this very candidate
        # (a retried or cleared promote after the rollback): crowning it again would silently undo the rollback
        raise ChampionMoved(
            f"{registry.registered_model_name(evaluation.target)}: v{current} is champion again because an operator "
            f"rolled back from candidate v{candidate_version}: not crowned again (`transfer-rec rollback "
            f"{evaluation.target}` again puts v{candidate_version} back in front)"
        )
    if current in (evaluation.champion_version, candidate_version):
        return current
    against = f"v{evaluation.champion_version}" if evaluation.champion_version else "no champion"
    now_text = f"v{current}" if current is not None else "no champion"
    raise ChampionMoved(
        f"{registry.registered_model_name(evaluation.target)}: the champion is {now_text} now, but candidate "
        f"v{candidate_version} was evaluated against {against} "
        "(a rollback or another run's promotion since): nothing promoted; clear this target's evaluate task (or "
        "re-run) to compare it with the current champion"
    )


def rollback(target: str, layout: StateLayout, force: bool = False) -> dict[str, Any]:
    """Move `champion` back to `previous_champion`, unless that model holds accounts of people who have since
    withheld consent in the current unified version (it would answer about them again; the gate replaced a champion
    for that very reason): refused (RollbackRefused) unless `force`, which also skips loading it to check."""
    tracking.configure(layout)
    name = registry.registered_model_name(target)
    if registry.rollback_pending(target):  # the restored model is already in front: finish moving the other alias
        return registry.rollback(target)
    previous = registry.alias_version(target, registry.PREVIOUS)
    if previous is None:
        raise registry.RollbackRefused(f"it needs a champion and a previous_champion; {name} has no previous_champion")
    version = str(previous.version)
    champion = registry.alias_version(target)
    if champion is not None and str(champion.version) == version:  # no marked rollback: nothing to load or check
        raise registry.RollbackRefused(
            f"{name}: champion and previous_champion are both v{version}: nothing to return to"
        )
    if force:
        log.warning("rolling back %s to v%s without checking it for withdrawn consent, as forced", name, version)
        # its withheld list stays as it was when it last served (loading it to write a new one is what --force
        # skips): the next run's evaluation writes it anew
        return registry.rollback(target, version)
    try:
        restore, _ = registry.champion_bundle(target, registry.PREVIOUS)
    except Exception as error:
        raise registry.RollbackRefused(
            f"could not load {name} v{version} to check it for withdrawn consent ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); nothing moved (--force rolls back without the check)"
        ) from error
    withdrawn = withdrawn_accounts(restore, layout.unified / "current") if restore is not None else 0
    if withdrawn:
        raise registry.RollbackRefused(
            f"{name} v{version} holds {withdrawn} account(s) of people who have since withheld consent or were "
            "deleted (the "
            "current unified version): rolled back to, it would answer about them again; nothing moved (--force "
            "rolls back anyway)"
        )
    if restore is not None:  # it holds none of them: a list from when it last served would block people come back
        registry.withhold(target, version, None, previous.run_id)
    return registry.rollback(target, version)
