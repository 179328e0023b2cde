"""Figures a reviewer would rather look at than read: training curves, metrics by user segment with CIs and the
cold-start curve.

Matplotlib's object API on the Agg canvas (no pyplot, no display): safe in Airflow workers and threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CONTENDER_ORDER = ("candidate", "champion", "target_only", "ease", "popularity")


def training_curves(curves: dict[str, Sequence[tuple[int, float]]], title: str) -> Figure:
    """One panel per curve (e.g. finetune_loss, finetune_valid_ndcg): value by epoch."""
    names = [n for n, points in curves.items() if len(points)] or list(curves)[:1]
    fig = Figure(figsize=(5 * max(1, len(names)), 3.5))
    FigureCanvasAgg(fig)
    for index, name in enumerate(names, start=1):
        ax = fig.add_subplot(1, len(names), index)
        points = sorted(curves.get(name, []))
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3)
            if "ndcg" in name:
                best = int(np.argmax(values))
                ax.axvline(steps[best], color="grey", linestyle=":", label=f"best epoch {steps[best]}")
                ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# Segments with fewer users than this are left out of the bars and named under the panel: a bootstrap CI over a
# handful of users says nothing, and a one-user segment's 0 or 1 dwarfed every real bar.
MIN_SEGMENT_USERS = 20


def segment_bars(rows: list[dict], metrics: Sequence[str], title: str, min_users: int = MIN_SEGMENT_USERS) -> Figure:
    """Grouped bars per user segment, one bar per contender, 95% CI as error bars; one panel per metric. Segments
    with fewer than `min_users` users are named under the panel instead of drawn.

    `rows` are transfer_rec.metrics.ranking.segment_table rows
    ({segment, contender, metric, users, mean, ci_low, ci_high})."""
    fig = Figure(figsize=(11, 3.8 * len(metrics)))
    FigureCanvasAgg(fig)
    for index, metric in enumerate(metrics, start=1):
        ax = fig.add_subplot(len(metrics), 1, index)
        small = {r["segment"]: r["users"] for r in rows if r["metric"] == metric and 0 < r["users"] < min_users}
        chosen = [r for r in rows if r["metric"] == metric and r["users"] >= min_users]
        segments = list(dict.fromkeys(r["segment"] for r in chosen))
        present = {r["contender"] for r in chosen}
        contenders = [c for c in CONTENDER_ORDER if c in present] + sorted(present - set(CONTENDER_ORDER))
        width = 0.8 / max(1, len(contenders))
        for offset, contender in enumerate(contenders):
            by_segment = {r["segment"]: r for r in chosen if r["contender"] == contender}
            x = np.arange(len(segments)) + (offset - (len(contenders) - 1) / 2) * width
            means = np.array([by_segment[s]["mean"] if s in by_segment else np.nan for s in segments])
            low = np.array([by_segment[s]["ci_low"] if s in by_segment else np.nan for s in segments])
            high = np.array([by_segment[s]["ci_high"] if s in by_segment else np.nan for s in segments])
            errors = np.vstack([np.clip(means - low, 0, None), np.clip(high - means, 0, None)])
            ax.bar(x, means, width, yerr=errors, capsize=2, label=contender)
        users = {r["segment"]: r["users"] for r in chosen if r["contender"] == "candidate"}
        ax.set_xticks(np.arange(len(segments)))
        ax.set_xticklabels([f"{s}\n(n={users.get(s, '?')})" for s in segments], fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
        if contenders:
            ax.legend(fontsize=8, ncol=len(contenders))
        if small:
            shown = ", ".join(f"{s} (n={n})" for s, n in small.items())
            ax.set_title(f"not drawn, fewer than {min_users} users: {shown}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def cold_start_curve(rows: list[dict], title: str) -> Figure:
    """NDCG against history length, one line per contender with its 95% CI as a band.

    `rows` are cold-start curve rows ({history_length, contender, ndcg, ci_low, ci_high})."""
    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    present = {r["contender"] for r in rows}
    for contender in [c for c in CONTENDER_ORDER if c in present] + sorted(present - set(CONTENDER_ORDER)):
        chosen = sorted((r for r in rows if r["contender"] == contender), key=lambda r: r["history_length"])
        x = [r["history_length"] for r in chosen]
        ax.plot(x, [r["ndcg"] for r in chosen], marker="o", markersize=3, label=contender)
        ax.fill_between(x, [r["ci_low"] for r in chosen], [r["ci_high"] for r in chosen], alpha=0.15)
    lengths = sorted({r["history_length"] for r in rows})
    ax.set_xticks(lengths)
    ax.set_xlabel("history length n (0 = profile only)")
    ax.set_ylabel("NDCG")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
