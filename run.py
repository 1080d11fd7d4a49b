"""Run the mathllava pipeline with a config from configs/ and print a summary.

    python run.py --config configs/local.yaml [--set train.seed=1 ...] [--no-cache] [--no-schedule]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUSY = 75  # EX_TEMPFAIL, as for a scheduled run that found the lock held
# where ZenML logs a failed step with its traceback
STEP_FAILURE_LOGGERS = ("zenml.orchestrators.local.local_orchestrator", "zenml.orchestrators.step_launcher",
                        "zenml.orchestrators.step_runner")


def facts(run, overrides: dict | None = None):
    """The run's outputs and the registry's current view of its version, for the printed summary."""
    from zenml.enums import ExecutionStatus

    from mathllava.registry.promotion import show
    from mathllava.runreport import RunFacts

    def load(step: str, output: str):
        return run.steps[step].outputs[output][0].load()

    registration = load("register_model", "registration")
    training = load("train_model", "train_summary")
    curated = load("augment_questions", "curated_dataset")
    cached = sorted(n for n, s in run.steps.items() if s.status == ExecutionStatus.CACHED)
    row = next((r for r in show(registration["model_name"], registration["tracking_uri"])
                if str(r.version) == str(registration["version"])), None)
    registered_in = None
    if "register_model" in cached:
        registered_in = registration.get("zenml_run_name") or "an earlier run"
    return RunFacts(
        run=run.name, validation=load("validate_manifest", "validation_report"),
        cleaning=load("clean_manifest", "clean_report"), selection=load("select_images", "selection_report"),
        curated_rows=len(curated), augmented_by_type=curated["aug_type"].value_counts().to_dict(),
        training=training, evaluation=load("evaluate_model", "eval_report"),
        registration=registration, model_dir=training.get("model_dir") or str(load("train_model", "model_dir")),
        aliases=row.aliases if row else [], stage=row.stage if row else "not in the registry",
        tracking_uri=registration["tracking_uri"], cached_steps=cached, steps=len(run.steps),
        registered_in=registered_in, overrides=overrides or {})


def summary(run, overrides: dict | None = None) -> dict:
    """Counts through each stage, loss, accuracy and the registered version from a finished run (the
    values behind the printed summary, for scripts and tests)."""
    f = facts(run, overrides)
    validation, selection, training, evaluation, registration = (f.validation, f.selection, f.training,
                                                                 f.evaluation, f.registration)
    scorer = selection.get("scorer") or {}
    losses = [h["loss"] for h in training["history"] if "loss" in h]
    out = {
        "run": run.name,
        "ingested": validation["rows"],
        "valid": validation["valid"],
        "quarantined": validation["quarantined"],
        "quarantine_reasons": validation["reasons"],
        "failure_rate_by_dataset": {k: round(v["rate"], 4) for k, v in validation["per_dataset"].items()},
        "duplicates_removed": f.cleaning["dedup"]["removed"],
        "contamination_removed": f.cleaning["contamination"]["removed"],
        "scorer": {"method": scorer.get("method"),
                   **{f"{part}_{k}": round(scorer[part][k], 4) for part in ("complexity", "pool_complexity", "clarity")
                      for k in ("exact", "within_one", "accuracy") if isinstance((scorer.get(part) or {}).get(k), float)}},
        "dropped_unclear": selection["dropped_unclear"],
        "selected": selection["selected"],
        "selected_by_level": {k: f"{v['selected']} ({v['share']:.1%}, target {v['target_share']:.0%})"
                              for k, v in selection["levels"].items()},
        "selection_within_tolerance": selection["within_tolerance"],
        "selection_policy": selection["policy"],
        "curated": f.curated_rows,
        "augmented_by_type": f.augmented_by_type,
        "train_steps": training["global_step"],
        "train_truncated": training["truncated"],
        "train_dropped": training["dropped"],
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "heldout_accuracy": {k: evaluation["heldout"][k]["accuracy"] for k in ("model", "base", "frequent")},
        "model": f"{registration['model_name']} v{registration['version']}",
        "model_dir": f.model_dir,
        "aliases_now": f.aliases,
        "stage_now": f.stage,
        "registered_in": f.registered_in,
        "gate": registration["gate"],
        "promotion": registration.get("promotion"),
        "overrides": f.overrides,
        "mlflow_ui": registration.get("mlflow_ui", registration["tracking_uri"]),
        "cached_steps": f.cached_steps,
        "facts": f,
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


def sections() -> dict:
    """The typed models of a run config's `parameters`, by section."""
    from mathllava.augment import AugmentSettings
    from mathllava.data.config import DataSettings
    from mathllava.data.selection import SelectSettings
    from mathllava.data.validation import ValidationRules
    from mathllava.evaluation.settings import EvalSettings
    from mathllava.k8s.config import ClusterLaunch
    from mathllava.registry.promotion import RegisterSettings
    from mathllava.train.config import ModelSettings, TrainSettings

    return {"data": DataSettings, "validate": ValidationRules, "select": SelectSettings, "augment": AugmentSettings,
            "model": ModelSettings, "train": TrainSettings, "evaluate": EvalSettings, "register": RegisterSettings,
            "cluster": ClusterLaunch}


def check_config(path: str, source: str | None = None) -> None:
    """Refuse a config whose data, validate, select, augment, model, train, cluster or schedule section is
    wrong before any step runs (and before a schedule is sent anywhere): each error names its key's path.
    `source`: what the errors call the config (the file, with its --set overrides)."""
    from mathllava.schedule import check_cronjob_settings, schedule_of
    from mathllava.settings import parse

    source, models = source or path, sections()
    try:
        data = yaml_file(path)
        remote = "orchestrator.kubernetes" in (data.get("settings") or {})  # paths are the pods'
        params = data.get("parameters") or {}
        parsed = {name: parse(model, params.get(name), name, source, remote)
                  for name, model in models.items() if name != "cluster"}
        if not remote:
            parsed["data"].check_files()   # a missing source is refused before the synthetic data is drawn
        zenml_model = (data.get("model") or {}).get("name")
        if zenml_model and zenml_model != parsed["register"].model_name:
            raise ValueError(f"{source}: model.name ({zenml_model}) and parameters.register.model_name "
                             f"({parsed['register'].model_name}) must be the same model")
        if params.get("cluster") is not None:
            parse(models["cluster"], params["cluster"], "cluster", source).job_config()
        elif parsed["train"].launcher == "kubeflow":
            raise ValueError(f"{source}: train.launcher is kubeflow but parameters.cluster is not set")
        if schedule_of(path) is not None:
            check_cronjob_settings((data.get("settings") or {}).get("orchestrator.kubernetes"),
                                   f"{source}: settings.orchestrator.kubernetes of a scheduled run")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def with_overrides(path: str, overrides: list[str]) -> tuple[str, dict]:
    """The config at `path` with `--set KEY=VALUE` overrides applied, written to the state folder (named by
    its content, so the same overrides give the same file); returns (its path, {key: value} applied)."""
    import hashlib

    import yaml

    from mathllava.settings import apply_overrides
    from mathllava.state import state_home

    try:
        data = yaml_file(path)
        applied = apply_overrides(data.setdefault("parameters", {}), overrides, sections())
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    text = yaml.safe_dump(data, sort_keys=False)
    out = state_home(ROOT) / "configs" / f"{Path(path).stem}+{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {path} with --set {' '.join(overrides)}\n{text}", encoding="utf-8")
    return str(out), applied


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


def print_summary(info: dict, config: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from mathllava.runreport import next_command, summary_rows
    from mathllava.tracking import model_url, run_url

    f = info["facts"]
    table = Table(title="mathllava run", show_header=False, show_lines=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("result", overflow="fold")   # paths and commands whole, folded, never cut
    for label, text in summary_rows(f, config):
        table.add_row(label, text)
    console = Console()
    console.print(table)
    reg = f.registration
    console.print(f"MLflow, this run:      {run_url(f.tracking_uri, reg['mlflow_run_id'])}", soft_wrap=True)
    console.print(f"MLflow, the registry:  {model_url(f.tracking_uri, reg['model_name'])}", soft_wrap=True)
    console.print("ZenML dashboard:       `make dashboard` (pipeline runs, artifacts, model versions)")
    command = next_command(f, config)
    if command:
        console.print(f"Next: [bold]{command}[/bold]", soft_wrap=True)


def record_overrides(run, applied: dict, tracking_uri: str) -> None:
    """The --set overrides as run metadata in ZenML and as `override.<key>` parameters of the run's MLflow
    run (when this run made one: a run whose tracked steps all came from the cache has none)."""
    import mlflow
    from zenml import log_metadata

    if not applied:
        return
    log_metadata(metadata={"overrides": {k: json.dumps(v) for k, v in applied.items()}},
                 run_id_name_or_prefix=run.id)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(run.pipeline.name)
    if experiment is None:
        return
    for mlflow_run in client.search_runs([experiment.experiment_id],
                                         filter_string=f"attributes.run_name = '{run.name}'"):
        client.log_batch(mlflow_run.info.run_id, params=[
            mlflow.entities.Param(f"override.{k}", json.dumps(v)[:500]) for k, v in applied.items()])


def stack_tracking_uri() -> str | None:
    """The tracking URI of the active stack's MLflow experiment tracker (None without one)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    trackers = Client().active_stack_model.components.get(StackComponentType.EXPERIMENT_TRACKER) or []
    return (trackers[0].configuration or {}).get("tracking_uri") if trackers else None


def run_once(pipeline, options: dict):
    """One pipeline run, under the state folder's lock: first what killed runs left behind is cleared,
    then the tracking server is asked whether it answers. A fault the user can fix (a full disk, the
    tracking server gone) ends the run with one line instead of the step's traceback. (The steps set
    MLflow's client to give up on a dead server within seconds: steps/_quiet.py.)"""
    import logging

    from zenml.client import Client

    from mathllava.faults import OneLineFaults, explain, tracking_down
    from mathllava.localserver import healthy
    from mathllava.state import state_home
    from mathllava_zenml.recovery import recover

    uri = stack_tracking_uri()
    if uri and uri.startswith("http") and not healthy(uri, timeout=5):
        raise SystemExit(tracking_down(uri))
    recovered = recover(state_home(ROOT), uri, pipeline.name)
    for line in recovered.lines():
        print(f"recovered: {line}")

    def known(err: BaseException) -> str | None:
        return explain(err, uri, healthy(uri) if uri and uri.startswith("http") else None)

    quiet = OneLineFaults(known)
    loggers = [logging.getLogger(name) for name in STEP_FAILURE_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        run = pipeline.with_options(**options)()
    except Exception as err:  # noqa: BLE001
        line = known(err) or quiet.seen
        if line is None:
            raise
        raise SystemExit(line) from None
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    return Client().get_pipeline_run(run.id)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the config's parameters (repeatable): --set train.seed=1 "
                             "--set select.sampling.target_size=300; VALUE is read as YAML")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--wait", action="store_true",
                        help="wait for a pipeline run of the same state folder to end instead of exiting (code 75)")
    parser.add_argument("--no-schedule", action="store_true",
                        help="run once now, even if the config has a schedule: block")
    args = parser.parse_args(argv)
    config, applied, source = args.config, {}, args.config
    if args.set:
        config, applied = with_overrides(args.config, args.set)
        source = f"{args.config} with --set {' '.join(args.set)}"
    check_config(config, source)
    from pipelines import mathllava_training

    options = {"config_path": config}
    if args.no_cache:
        options["enable_cache"] = False
    scheduled = bool((yaml_file(config)).get("schedule"))
    if args.no_schedule and scheduled:
        options["config_path"] = without_schedule(config)
    elif scheduled:
        return schedule(config, mathllava_training, options)
    from mathllava.state import Busy, pipeline_lock

    try:
        with pipeline_lock(wait=args.wait, what=f"python run.py --config {source}"):
            run = run_once(mathllava_training, options)
    except Busy as busy:
        print(f"error: {busy}. This run did not start: a state folder takes one run at a time. Wait for that "
              "one to end, run again with --wait (make run RUN_ARGS=--wait) to wait for it, or use another "
              "MATHLLAVA_HOME.", file=sys.stderr)
        raise SystemExit(BUSY) from None
    failed_run(run)
    info = summary(run, applied)
    record_overrides(run, applied, info["facts"].tracking_uri)
    print_summary(info, args.config)
    return info


if __name__ == "__main__":
    main()
