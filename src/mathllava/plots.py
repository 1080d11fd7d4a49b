"""Figures logged to MLflow: selection distributions, loss curve, accuracy per category."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def complexity_distribution(before: pd.DataFrame, after: pd.DataFrame):
    """Counts per complexity level and source, before and after selection."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, frame, title in ((axes[0], before, "clear images before selection"), (axes[1], after, "selected")):
        table = frame.groupby(["complexity", "source"]).size().unstack(fill_value=0)
        table.plot(kind="bar", stacked=True, ax=ax, legend=ax is axes[1], colormap="tab20")
        ax.set_title(f"{title} (n={len(frame)})")
        ax.set_xlabel("complexity level")
        ax.set_ylabel("images")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def clarity_histogram(scored: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([scored.loc[scored["clear"], "clarity_score"], scored.loc[~scored["clear"], "clarity_score"]],
            bins=20, stacked=True, label=["clear", "unclear"])
    ax.set_xlabel("clarity score")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curve(history: list[dict]):
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("training loss")
    fig.tight_layout()
    return fig


def accuracy_bars(named: dict[str, dict[str, float]], title: str):
    """Grouped bars: one group per category, one bar per model/baseline."""
    frame = pd.DataFrame(named).fillna(0.0)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(frame)), 4.5))
    frame.plot(kind="bar", ax=ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: list[list[int]], title: str, labels: list[str] | None = None):
    """Counts with labelled level on the rows and predicted level on the columns."""
    import numpy as np

    data = np.asarray(matrix)
    labels = labels or [str(i) for i in range(len(data))]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(data, cmap="Blues")
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > data.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted level")
    ax.set_ylabel("labelled level")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def selection_vs_targets(levels: dict, tolerance: float):
    """Selected share per level against the target share, with the tolerance band."""
    keys = sorted(levels, key=int)
    fig, ax = plt.subplots(figsize=(6, 4))
    target = [100 * levels[k]["target_share"] for k in keys]
    got = [100 * levels[k]["share"] for k in keys]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], target, width=0.4, label="target")
    ax.bar([i + 0.2 for i in x], got, width=0.4, label="selected")
    ax.errorbar(list(x), target, yerr=100 * tolerance, fmt="none", ecolor="black", capsize=6, label="tolerance")
    ax.set_xticks(list(x), [f"level {k}" for k in keys])
    ax.set_ylabel("share of the budget (%)")
    ax.legend()
    fig.tight_layout()
    return fig
