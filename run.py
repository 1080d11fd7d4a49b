"""Run the mathllava pipeline with a config from configs/ and print a summary.

    python run.py --config configs/local.yaml [--no-cache]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def summary(run) -> dict:
    """Counts through each stage, loss, accuracy and the registered version from a finished run."""
    from zenml.enums import ExecutionStatus

    def load(step: str, output: str):
        return run.steps[step].outputs[output][0].load()

    validation = load("validate_manifest", "validation_report")
    selection = load("select_images", "selection_report")
    curated = load("augment_questions", "curated_dataset")
    training = load("train_model", "train_summary")
    evaluation = load("evaluate_model", "eval_report")
    registration = load("register_model", "registration")
    losses = [h["loss"] for h in training["history"] if "loss" in h]
    out = {
        "run": run.name,
        "ingested": validation["rows"],
        "valid": validation["valid"],
        "quarantined": validation["quarantined"],
        "quarantine_reasons": validation["reasons"],
        "dropped_unclear": selection["dropped_unclear"],
        "selected": selection["selected"],
        "selected_by_level": selection["targets_by_level"],
        "curated": len(curated),
        "augmented_by_type": curated["aug_type"].value_counts().to_dict(),
        "train_steps": training["global_step"],
        "train_truncated": training["truncated"],
        "train_dropped": training["dropped"],
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "heldout_accuracy": {k: evaluation["heldout"][k]["accuracy"] for k in ("model", "base", "frequent")},
        "model": f"{registration['model_name']} v{registration['version']}",
        "alias": registration["alias"],
        "gate": registration["gate"],
        "mlflow_ui": registration["tracking_uri"],
        "cached_steps": sorted(n for n, s in run.steps.items() if s.status == ExecutionStatus.CACHED),
    }
    if "mathv" in evaluation:
        out["mathv_accuracy"] = {k: evaluation["mathv"][k]["accuracy"] for k in ("model", "base", "frequent")}
    return out


def check_config(path: str) -> None:
    """Refuse a config whose model or train section is wrong before any step runs."""
    from mathllava.train.config import load_sections

    try:
        load_sections(path)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def print_summary(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mathllava run {info['run']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    Console().print(table)
    Console().print(f"Open the MLflow UI: [bold]{info['mlflow_ui']}[/bold]  (experiment 'mathllava_training')")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)
    check_config(args.config)
    from pipelines import mathllava_training

    options = {"config_path": args.config}
    if args.no_cache:
        options["enable_cache"] = False
    run = mathllava_training.with_options(**options)()
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    info = summary(run)
    print_summary(info)
    return info


if __name__ == "__main__":
    main()
