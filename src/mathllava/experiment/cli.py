"""`mathllava experiment run --config configs/experiments/recipe.yaml`.

Trains one model per arm × seed (the cells missing from an earlier run only), scores each on the same
held-out sets, prints the table of arms with intervals and paired differences, and logs one MLflow
parent run with a nested run per cell. Exit codes: 0 done, 2 bad input."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..tracking import default_tracking_uri
    from .ablation import run_experiment
    from .config import load
    from .report import markdown

    try:
        settings, recipe = load(args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = None if args.no_tracking else (args.tracking_uri or default_tracking_uri())
    try:
        report = run_experiment(settings, recipe, Path(args.out) if args.out else None, uri)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(markdown(report))
    if report.get("mlflow_parent_run"):
        print(f"MLflow parent run (chart, table, one nested run per cell): {report['mlflow_parent_run']}")
    return 0


def register(sub) -> None:
    exp = sub.add_parser("experiment", help="data-recipe experiments: arms × seeds at equal compute",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = exp.add_subparsers(dest="action", required=True)
    p = actions.add_parser("run", help="train and score every missing arm × seed cell, then report")
    p.add_argument("--config", required=True, help="an experiment file, e.g. configs/experiments/recipe.yaml")
    p.add_argument("--out", help="the experiment folder (default: $MATHLLAVA_HOME/experiments/<name>)")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local server)")
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    p.set_defaults(func=run)
