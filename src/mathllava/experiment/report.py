"""The experiment's report: `report.json`, a markdown table (`report.md`, also printed) and a
comparison chart (`comparison.png`): per evaluation set, each arm's mean accuracy with its interval,
and each arm's paired difference from the reference arm with its interval."""

from __future__ import annotations

import json
from pathlib import Path

SET_NAMES = {"heldout": "held-out synthetic split (MathVista rules)", "mathv": "Math-V testmini (Math-V rules)"}


def markdown(report: dict) -> str:
    lines = [f"# Experiment `{report['experiment']}`", "",
             f"Seeds {report['seeds']}; every arm {report['compute']['steps']} optimizer steps of "
             f"{report['compute']['batch_size']} sequences padded to {report['compute']['seq_len']} tokens. "
             f"Intervals: {int(next(iter(report['sets'].values()))['confidence'] * 100)}% bootstrap over problems "
             f"and seeds; differences are paired by seed and problem."]
    rows_by_arm: dict[str, list[int]] = {}
    for cell in report["cells"]:
        rows_by_arm.setdefault(cell["arm"], []).append(cell["rows"])
    for split, summary in report["sets"].items():
        reference = summary["reference"]
        lines += ["", f"## {SET_NAMES.get(split, split)}: {summary['problems']} problems", "",
                  f"| arm | training rows | accuracy % [interval] | per seed | vs {reference}, points [interval] | MDE |",
                  "|---|---:|---|---|---|---:|"]
        for arm, values in summary["arms"].items():
            diff = summary["differences"].get(arm)
            delta = (f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"
                     + (" *" if diff["excludes_zero"] else "")) if diff else "reference"
            mde = f"{diff['mde']:.2f}" if diff else ""
            rows = rows_by_arm.get(arm, [])
            lines.append(f"| {arm} | {round(sum(rows) / len(rows)) if rows else ''} | {values['mean']:.2f} "
                         f"[{values['low']:.2f}, {values['high']:.2f}] | "
                         f"{', '.join(f'{v:.1f}' for v in values['per_seed'])} | {delta} | {mde} |")
    lines += ["", "`*`: the interval excludes zero. MDE: the smallest true difference these seeds and problems "
                  "would detect (5% level, 80% power), in points.",
              f"Cells trained in this run: {len(report['trained'])}; reused: {len(report['reused'])}."]
    return "\n".join(lines) + "\n"


def comparison_chart(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(report["sets"].items())
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 7.5), squeeze=False)
    for column, (split, summary) in enumerate(sets):
        arms = list(summary["arms"])
        means = [summary["arms"][a]["mean"] for a in arms]
        errors = [[m - summary["arms"][a]["low"] for a, m in zip(arms, means)],
                  [summary["arms"][a]["high"] - m for a, m in zip(arms, means)]]
        ax = axes[0][column]
        ax.bar(arms, means, yerr=errors, capsize=4, color="#4c72b0")
        for i, arm in enumerate(arms):
            seeds = summary["arms"][arm]["per_seed"]
            ax.scatter([i] * len(seeds), seeds, color="black", s=10, zorder=3)
        ax.set_title(f"{SET_NAMES.get(split, split)}\n{summary['problems']} problems")
        ax.set_ylabel("accuracy (%), mean and interval; dots: seeds")
        ax = axes[1][column]
        others = list(summary["differences"])
        deltas = [summary["differences"][a]["mean"] for a in others]
        ax.errorbar(others, deltas, capsize=4, fmt="o", color="#dd8452",
                    yerr=[[d - summary["differences"][a]["low"] for a, d in zip(others, deltas)],
                          [summary["differences"][a]["high"] - d for a, d in zip(others, deltas)]])
        ax.axhline(0, color="grey", lw=1)
        ax.set_ylabel(f"paired difference from {summary['reference']} (points)")
        for ax in axes[:, column]:
            plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.suptitle(f"experiment {report['experiment']}: seeds {report['seeds']}")
    fig.tight_layout()
    return fig


def write_report(report: dict, folder: Path) -> None:
    import matplotlib.pyplot as plt

    (folder / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
    fig = comparison_chart(report)
    fig.savefig(folder / "comparison.png", dpi=110)
    plt.close(fig)
