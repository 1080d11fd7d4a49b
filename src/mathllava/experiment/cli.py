"""`mathllava experiment run|promote`.

    mathllava experiment run --config configs/experiments/recipe.yaml
    mathllava experiment promote --config configs/experiments/recipe.yaml --cell augmented/seed-0

`run` trains one model per arm × seed (the cells missing from an earlier run only), scores each on the
same held-out sets, prints the table of arms with intervals and paired differences, and logs one MLflow
parent run with a nested run per cell. `promote` makes a cell's registered model version the
`challenger` and runs `mathllava registry promote` on it with the base config's `register.promotion`.
Exit codes: 0 done, 1 the challenger lost, 2 bad input, 3 a concurrent change."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..tracking import require_server, tracking_source
    from .ablation import run_experiment
    from .config import load
    from .report import markdown

    uri, source = (None, None) if args.no_tracking else tracking_source(args.tracking_uri)
    try:
        settings, recipe = load(args.config)
        if uri:
            require_server(uri, source)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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


def promote(args: argparse.Namespace) -> int:
    """The cell's version becomes the challenger (recorded on it), then the registry's own comparison."""
    import json
    from pathlib import Path

    from ..registry import cli as registry_cli
    from ..registry.evaluate import evaluation_sets
    from ..registry.promotion import CHALLENGER, _client, record, registry_lock
    from ..state import registry_lock_path, state_home
    from ..tracking import require_server, tracking_source
    from .config import load

    uri, source = tracking_source(args.tracking_uri)
    try:
        settings, _recipe = load(args.config)
        folder = Path(args.out) if args.out else state_home() / "experiments" / settings.name
        report_path = folder / "report.json"
        if not report_path.is_file():
            raise ValueError(f"{report_path}: no report: run `mathllava experiment run --config {args.config}` first")
        cells = {f"{c['arm']}/seed-{c['seed']}": c for c in json.loads(report_path.read_text())["cells"]}
        if args.cell not in cells:
            raise ValueError(f"no cell {args.cell!r} in {report_path}; cells: {', '.join(sorted(cells))}")
        lineage = cells[args.cell].get("mlflow") or {}
        if not lineage.get("model_version"):
            raise ValueError(f"cell {args.cell} has no registered model (registry.model_name was not set)")
        require_server(uri, source)
        # the comparison's sets exist before the alias moves: a promotion that cannot run changes nothing
        evaluation_sets(registry_cli.promotion_settings(settings.base_config).eval)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name, version = lineage["model_name"], lineage["model_version"]
    client = _client(uri)
    with registry_lock(registry_lock_path(name)):
        client.set_registered_model_alias(name, CHALLENGER, version)
        record(client, name, version, {"event": "nominated", "stage": "staging", "experiment": settings.name,
                                       "cell": args.cell, "reason": args.reason or ""})
    print(f"{name}: v{version} ({settings.name} {args.cell}) is the challenger")
    namespace = argparse.Namespace(action="promote", name=name, tracking_uri=uri, config=settings.base_config,
                                   reason=args.reason or f"experiment {settings.name} {args.cell}")
    return registry_cli.run(namespace)


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
    p = actions.add_parser("promote", help="a cell's model -> challenger, then the registry's comparison")
    p.add_argument("--config", required=True, help="the experiment file the cell was trained by")
    p.add_argument("--cell", required=True, help="ARM/seed-S, as the report names it")
    p.add_argument("--out", help="the experiment folder (default: $MATHLLAVA_HOME/experiments/<name>)")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local server)")
    p.add_argument("--reason", help="recorded with the decision")
    p.set_defaults(func=promote)
