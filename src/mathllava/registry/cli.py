"""`mathllava registry show|promote|rollback|history NAME`.

    mathllava registry show math-llava-7b
    mathllava registry promote math-llava-7b --config configs/local.yaml   # exit 1 with the reasons if it loses
    mathllava registry rollback math-llava-7b --reason "regression on MathVista"
    mathllava registry history math-llava-7b

The tracking server is --tracking-uri, else $MLFLOW_TRACKING_URI, else the local server
(http://127.0.0.1:$MLFLOW_PORT, 5077). promote reads `register.promotion` (margins per metric,
evaluation sets) from the run config's parameters. Exit codes: 0 done, 1 the challenger lost, 2 bad input,
3 a concurrent change (nothing moved).
"""

from __future__ import annotations

import argparse
import json
import sys


def tracking_uri(args) -> str:
    from ..tracking import tracking_source

    return tracking_source(args.tracking_uri)[0]


def promotion_settings(config: str | None):
    from ..settings import parse, read_yaml
    from .promotion import PromotionSettings

    if config is None:
        return PromotionSettings()
    data = read_yaml(config)
    section = ((data.get("parameters") or data).get("register") or {}).get("promotion")
    return parse(PromotionSettings, section, "register.promotion", str(config))


def tell_listeners(name: str, uri: str) -> None:
    """Every installed `mathllava.stage_listeners` entry point (the ZenML model stages) hears of a decision;
    one that fails is reported, the decision stands."""
    from importlib.metadata import entry_points

    for listener in entry_points(group="mathllava.stage_listeners"):
        try:
            stages = listener.load()(name, uri)
        except Exception as err:  # noqa: BLE001 - the registry changed already; say what did not follow
            print(f"warning: {listener.name} stages not updated: {type(err).__name__}: {err}", file=sys.stderr)
        else:
            if stages:
                print(f"{listener.name} stages: " + ", ".join(f"v{v} {s}" for v, s in sorted(stages.items())))


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from ..state import registry_lock_path
    from ..tracking import require_server, tracking_source
    from . import promotion

    uri, source = tracking_source(args.tracking_uri)
    try:
        require_server(uri, source)   # seconds, not minutes of retries, when the server is down
        promotion.require_model(args.name, uri)
        if args.action == "show":
            for row in promotion.show(args.name, uri):
                scores = {k: v for k, v in row.tags.items() if k.endswith("accuracy")}
                print(f"v{row.version}\t{row.stage}\t{','.join(row.aliases) or '-'}\trun {row.run_id}\t"
                      f"{json.dumps(scores)}")
        elif args.action == "history":
            for event in promotion.history(args.name, uri):
                print(json.dumps(event, sort_keys=True))
        elif args.action == "rollback":
            entry = promotion.rollback(args.name, args.reason or "", registry_lock_path(args.name), uri)
            print(f"{args.name}: champion is v{entry['champion']} again (was v{entry['rolled_back']}): {args.reason}")
            tell_listeners(args.name, uri)
        else:
            from .evaluate import scorer

            settings = promotion_settings(args.config)
            evaluate = scorer(settings.eval, uri)
            decision, entry = promotion.promote(args.name, evaluate, settings.margins,
                                                registry_lock_path(args.name), uri, reason=args.reason or "")
            print(f"compared on the same sets {evaluate.sets}: " + "; ".join(decision.reasons))
            if not decision.promote:
                print(f"error: v{entry['challenger']} stays challenger: it does not beat the champion",
                      file=sys.stderr)
                return 1
            print(f"{args.name}: v{entry['challenger']} is champion"
                  + (f", v{entry['champion']} previous-champion" if entry["champion"] else ""))
            tell_listeners(args.name, uri)
    except promotion.PromotionConflict as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except MlflowException as err:   # an unreachable server, a refused request
        print(f"error: MLflow at {uri}: {err.message}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    reg = sub.add_parser("registry", help="model versions and their promotion through stages",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = reg.add_subparsers(dest="action", required=True)
    for action, text in (("show", "versions, stages, aliases"), ("promote", "challenger -> champion if it wins"),
                         ("rollback", "previous champion -> champion"), ("history", "every decision, oldest first")):
        p = actions.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("--tracking-uri")
        if action == "promote":
            p.add_argument("--config", help="run config whose register.promotion sets margins and eval sets")
        if action in ("promote", "rollback"):
            p.add_argument("--reason", required=action == "rollback", help="recorded with the decision")
        p.set_defaults(func=run)
