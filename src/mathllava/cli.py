"""`mathllava` command line.

    mathllava eval score --benchmark mathvista PREDICTIONS.json --out SCORES.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _score(args: argparse.Namespace) -> int:
    if args.benchmark != "mathvista":
        print(f"error: re-scoring for {args.benchmark!r} is not available yet (only mathvista)", file=sys.stderr)
        return 2
    predictions = json.loads(Path(args.predictions).read_text(encoding="utf-8"))
    from .evaluation.mathvista import rescore

    updated, scores = rescore(predictions)
    Path(args.out).write_text(json.dumps(scores, indent=4, ensure_ascii=False))
    if args.updated:
        Path(args.updated).write_text(json.dumps(updated, indent=4, ensure_ascii=False))
    avg = scores["average"]
    print(f"{args.benchmark}: {avg['correct']}/{avg['total']} = {avg['accuracy']}%  -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mathllava")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="benchmark evaluation").add_subparsers(dest="action", required=True)
    score = ev.add_parser("score", help="re-score a benchmark-format predictions file")
    score.add_argument("predictions")
    score.add_argument("--benchmark", choices=["mathvista", "mathv", "mmmu"], default="mathvista")
    score.add_argument("--out", required=True, help="scores file, in the benchmark's own layout")
    score.add_argument("--updated", help="also write the predictions with re-computed prediction/true_false")
    score.set_defaults(func=_score)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
