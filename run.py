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
    cleaning = load("clean_manifest", "clean_report")
    selection = load("select_images", "selection_report")
    scorer = selection.get("scorer") or {}
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
        "failure_rate_by_dataset": {k: round(v["rate"], 4) for k, v in validation["per_dataset"].items()},
        "duplicates_removed": cleaning["dedup"]["removed"],
        "contamination_removed": cleaning["contamination"]["removed"],
        "scorer": {"method": scorer.get("method"),
                   **{f"{part}_{k}": round(scorer[part][k], 4) for part in ("complexity", "pool_complexity", "clarity")
                      for k in ("exact", "within_one", "accuracy") if isinstance((scorer.get(part) or {}).get(k), float)}},
        "dropped_unclear": selection["dropped_unclear"],
        "selected": selection["selected"],
        "selected_by_level": {k: f"{v['selected']} ({v['share']:.1%}, target {v['target_share']:.0%})"
                              for k, v in selection["levels"].items()},
        "selection_within_tolerance": selection["within_tolerance"],
        "selection_policy": selection["policy"],
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
        "promotion": registration.get("promotion"),
        "mlflow_ui": registration.get("mlflow_ui", registration["tracking_uri"]),
        "cached_steps": sorted(n for n, s in run.steps.items() if s.status == ExecutionStatus.CACHED),
    }
    if "mathv" in evaluation:
        out["mathv_accuracy"] = {k: evaluation["mathv"][k]["accuracy"] for k in ("model", "base", "frequent")}
    return out


def failed_run(run) -> None:
    """Stop with the failed steps' names when the run failed. The local orchestrator raises the step's
    error itself; the Kubernetes orchestrator returns once its orchestrator pod is done, failed run or not."""
    from zenml.enums import ExecutionStatus

    if run.status == ExecutionStatus.FAILED:
        failed = sorted(name for name, step in run.steps.items() if step.status == ExecutionStatus.FAILED)
        raise SystemExit(f"error: pipeline run {run.name} failed"
                         + (f" in step(s): {', '.join(failed)}" if failed else ""))


def check_config(path: str) -> None:
    """Refuse a config whose data, validate, select, augment, model, train, cluster or schedule section is
    wrong before any step runs (and before a schedule is sent anywhere): each error names its key's path."""
    from mathllava.augment import AugmentSettings
    from mathllava.data.config import DataSettings
    from mathllava.data.selection import SelectSettings
    from mathllava.data.validation import ValidationRules
    from mathllava.k8s.config import ClusterLaunch
    from mathllava.evaluation.settings import EvalSettings
    from mathllava.registry.promotion import RegisterSettings
    from mathllava.schedule import check_cronjob_settings, schedule_of
    from mathllava.settings import parse
    from mathllava.train.config import load_sections

    try:
        data = yaml_file(path)
        remote = "orchestrator.kubernetes" in (data.get("settings") or {})  # paths are the pods'
        _model, train = load_sections(path, remote=remote)
        cluster = (data.get("parameters") or {}).get("cluster")
        register = (data.get("parameters") or {}).get("register") or {}
        sections = {"data": DataSettings, "validate": ValidationRules, "select": SelectSettings,
                    "augment": AugmentSettings, "evaluate": EvalSettings, "register": RegisterSettings}
        parsed = {name: parse(model, (data.get("parameters") or {}).get(name), name, path, remote)
                  for name, model in sections.items()}
        if not remote:
            parsed["data"].check_files()   # a missing source is refused before the synthetic data is drawn
        zenml_model = (data.get("model") or {}).get("name")
        if zenml_model and register.get("model_name") and zenml_model != register["model_name"]:
            raise ValueError(f"{path}: model.name ({zenml_model}) and parameters.register.model_name "
                             f"({register['model_name']}) must be the same model")
        if cluster is not None:
            parse(ClusterLaunch, cluster, "parameters.cluster", path).job_config()
        elif train.launcher == "kubeflow":
            raise ValueError(f"{path}: train.launcher is kubeflow but parameters.cluster is not set")
        if schedule_of(path) is not None:
            check_cronjob_settings((data.get("settings") or {}).get("orchestrator.kubernetes"),
                                   f"{path}: settings.orchestrator.kubernetes of a scheduled run")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def schedule(config: str, pipeline, options: dict) -> dict:
    """The config's schedule: a ZenML schedule on an orchestrator that has a scheduler (Kubernetes: a
    CronJob), else a cron entry on this machine (`mathllava schedule`)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    block = yaml_file(config)["schedule"]
    flavor = Client().active_stack_model.components[StackComponentType.ORCHESTRATOR][0].flavor_name
    if flavor == "local":
        from mathllava import localcron

        name = block.get("name") or f"mathllava-{Path(config).stem}"
        try:
            entry = localcron.create(name, block["cron_expression"], config, ROOT)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        print(f"scheduled on this machine: cron entry {entry.name} ({entry.cron}); `mathllava schedule list`")
    else:
        pipeline.with_options(**options)()
        print(f"scheduled on the {flavor} orchestrator: {block}; `zenml pipeline schedule list`")
    return {"schedule": block, "orchestrator": flavor}


def yaml_file(path: str) -> dict:
    from mathllava.settings import read_yaml

    return read_yaml(path)


def without_schedule(path: str) -> str:
    """A copy of the run config without its schedule: block (ZenML reads schedules from the file)."""
    import tempfile

    import yaml

    data = yaml_file(path)
    data.pop("schedule", None)
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="run-once-", delete=False)
    with handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return handle.name


def print_summary(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mathllava run {info['run']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    Console().print(table)
    Console().print(f"Open the MLflow UI (the experiment's runs): [bold]{info['mlflow_ui']}[/bold]")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--no-schedule", action="store_true",
                        help="run once now, even if the config has a schedule: block")
    args = parser.parse_args(argv)
    check_config(args.config)
    from pipelines import mathllava_training

    options = {"config_path": args.config}
    if args.no_cache:
        options["enable_cache"] = False
    scheduled = bool((yaml_file(args.config)).get("schedule"))
    if args.no_schedule and scheduled:
        options["config_path"] = without_schedule(args.config)
    elif scheduled:
        return schedule(args.config, mathllava_training, options)
    run = mathllava_training.with_options(**options)()
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    failed_run(run)
    info = summary(run)
    print_summary(info)
    return info


if __name__ == "__main__":
    main()
