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
from pathlib import Path


def tracking_uri(args) -> str:
    from ..tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def promotion_settings(config: str | None):
    import yaml

    from ..settings import parse
    from .promotion import PromotionSettings

    if config is None:
        return PromotionSettings()
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = ((data.get("parameters") or data).get("register") or {}).get("promotion")
    return parse(PromotionSettings, section, "register.promotion", str(path))


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from ..state import registry_lock_path
    from . import promotion

    uri = tracking_uri(args)
    try:
        if args.action == "show":
            rows = promotion.show(args.name, uri)
            if not rows:
                raise ValueError(f"no registered model {args.name!r} at {uri}")
            for row in rows:
                scores = {k: v for k, v in row.tags.items() if k.endswith("accuracy")}
                print(f"v{row.version}\t{row.stage}\t{','.join(row.aliases) or '-'}\trun {row.run_id}\t"
                      f"{json.dumps(scores)}")
        elif args.action == "history":
            for event in promotion.history(args.name, uri):
                print(json.dumps(event, sort_keys=True))
        elif args.action == "rollback":
            entry = promotion.rollback(args.name, args.reason or "", registry_lock_path(args.name), uri)
            print(f"{args.name}: champion is v{entry['champion']} again (was v{entry['rolled_back']}): {args.reason}")
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
