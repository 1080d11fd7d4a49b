"""`run_experiment(config)`: every arm × seed cell trained and scored, the intervals, the report, MLflow.

Layout of `$MATHLLAVA_HOME/experiments/<name>/` (or `--out`):
    pool-<key>/                 the scored pool and held-out manifest (`pool`)
    bases/seed-<s>-<key>/       the seed's base model (the built-in tiny model, its tokenizer trained on
                                every arm's text at that seed), shared by all arms at that seed
    cells/<arm>/seed-<s>/       data/ (MathV360K layout), train/, eval/<set>/, result.json
    report.json, report.md, comparison.png, parent_run.json

MLflow: one parent run per experiment with a nested run per cell (params, training curves, scores,
the dataset as an input, the model registered when `registry.model_name` is set). A rerun continues
the same parent run: finished cells are reused (their nested runs stay), a cell whose run was killed
is marked KILLED and trained again."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..evaluation.mathv import load_mathv
from ..evaluation.runner import problem_from_row
from ..state import state_home
from .arms import arm_rows
from .cells import Cell, cell_key, run_cell, train_settings
from .config import ExperimentSettings, RecipeParameters
from .pool import prepare_pool
from .report import write_report
from .stats import summarize


def evaluation_sets(settings: ExperimentSettings, heldout: pd.DataFrame, seen: set[str]) -> dict[str, list[dict]]:
    """The same problems for every cell: images any arm trains on never appear in them."""
    sets = {}
    if settings.evaluate.heldout:
        rows = heldout[~heldout["image_sha256"].isin(seen)].to_dict("records")
        sets["heldout"] = [problem_from_row(r) | {"image_path": r["image_path"]}
                           for r in rows[: settings.evaluate.heldout_limit or None]]
    folder = settings.evaluate.math_v_dir
    if folder and (Path(folder) / "images").is_dir():
        from ..train.encoded import file_digest

        problems = load_mathv(folder, settings.evaluate.math_v_limit)
        sets["mathv"] = [p for p in problems if file_digest(Path(p["image_path"])) not in seen]
    if not any(sets.values()):
        raise ValueError("no evaluation problem left (no held-out split, Math-V folder missing or all seen)")
    return {k: v for k, v in sets.items() if v}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_models(settings: ExperimentSettings, recipe: RecipeParameters, work: Path,
                rows_by_seed: dict[int, list[pd.DataFrame]]) -> dict[int, tuple[Path, str]]:
    """(base model, its key) per seed: `model.base` for every seed when given, else the tiny model
    initialised with the seed, its tokenizer trained on the text of every arm at that seed."""
    from ..formats import llava_record
    from ..train.tiny import init_tiny

    if recipe.model.base:
        return {s: (Path(recipe.model.base), recipe.model.base) for s in settings.seeds}
    out = {}
    for seed in settings.seeds:
        texts = sorted({turn["value"] for frame in rows_by_seed[seed] for row in frame.to_dict("records")
                        for turn in llava_record(row, "x.png")["conversations"]})
        shape = recipe.model.tiny.model_copy(update={"seed": seed})
        key = _digest([texts, shape.model_dump()])
        folder = work / "bases" / f"seed-{seed}-{key}"
        if not (folder / "config.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            init_tiny(folder, shape, texts)
        out[seed] = (folder, key)
    return out


class Tracker:
    """The experiment's MLflow runs: one parent, a nested run per cell (no-ops without a tracking URI)."""

    def __init__(self, settings: ExperimentSettings, work: Path, tracking_uri: str | None):
        self.enabled = bool(tracking_uri)
        self.work, self.settings = work, settings
        if not self.enabled:
            return
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        experiment = mlflow.set_experiment(f"mathllava-experiment-{settings.name}")
        self.experiment_id = experiment.experiment_id
        state = work / "parent_run.json"
        previous = json.loads(state.read_text()) if state.is_file() else {}
        run_id = previous.get("run_id") if previous.get("config") == settings.digest() else None
        if run_id is not None:
            try:
                mlflow.tracking.MlflowClient().get_run(run_id)
            except Exception:
                run_id = None
        self.parent = mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{settings.name}")
        from ..tracking import mark_training_experiment

        mark_training_experiment()
        state.write_text(json.dumps({"run_id": self.parent.info.run_id, "config": settings.digest()}))
        if run_id is None:
            mlflow.log_params({"arms": ",".join(a.name for a in settings.arms), "seeds": str(settings.seeds),
                               "reference": settings.reference, **{f"compute.{k}": v for k, v in
                                                                    settings.compute.model_dump().items()}})

    @property
    def url(self) -> str | None:
        if not self.enabled:
            return None
        import mlflow

        from ..tracking import run_url

        return run_url(mlflow.get_tracking_uri(), self.parent.info.run_id)

    def reused(self, cell: Cell, result: dict) -> None:
        """A cell finished earlier: its nested run stays if it belongs to this parent, else a record of it."""
        if not self.enabled or (result.get("mlflow") or {}).get("parent_run_id") == self.parent.info.run_id:
            return
        import mlflow

        with mlflow.start_run(run_name=cell.name, nested=True,
                              tags={"arm": cell.arm, "seed": str(cell.seed), "reused": "true",
                                    "reused_from": str((result.get("mlflow") or {}).get("run_id"))}):
            self._scores(result)

    def _scores(self, result: dict) -> None:
        import mlflow

        mlflow.log_metrics({f"eval/{split}/accuracy": v["accuracy"] for split, v in result["evaluation"].items()})

    def start_cell(self, cell: Cell):
        """A nested run for a cell about to train; a run a killed attempt left open is marked KILLED."""
        if not self.enabled:
            return None
        import mlflow

        stale = cell.folder / "mlflow_run.json"
        if stale.is_file():
            try:
                client = mlflow.tracking.MlflowClient()
                old = json.loads(stale.read_text())["run_id"]
                if client.get_run(old).info.status == "RUNNING":
                    client.set_terminated(old, "KILLED")
            except Exception:
                pass
        run = mlflow.start_run(run_name=cell.name, nested=True, tags={"arm": cell.arm, "seed": str(cell.seed),
                                                                       "data_digest": cell.data_report["digest"]})
        cell.folder.mkdir(parents=True, exist_ok=True)
        stale.write_text(json.dumps({"run_id": run.info.run_id}))
        mlflow.log_params({"arm": cell.arm, "seed": cell.seed, "rows": cell.data_report["rows"],
                           "images": cell.data_report["images"], "data_digest": cell.data_report["digest"],
                           **{f"rows.{k}": v for k, v in cell.data_report["by_aug_type"].items()}})
        return run

    def finish_cell(self, cell: Cell, result: dict) -> None:
        """Lineage on the cell's run: its dataset as an input (with its digest), its model registered."""
        if not self.enabled:
            return
        import mlflow

        from ..registry.versions import register_model_dir

        columns = [c for c in ("id", "source", "image_sha256", "question", "answer", "aug_type", "parent_id")
                   if c in cell.rows]
        dataset = mlflow.data.from_pandas(cell.rows[columns], source=str(cell.folder / "data"),
                                          name=f"{self.settings.name}-{cell.arm}-seed{cell.seed}",
                                          targets="answer", digest=cell.data_report["digest"])
        mlflow.log_input(dataset, context="training")
        result["mlflow"] = {"run_id": mlflow.active_run().info.run_id, "parent_run_id": self.parent.info.run_id}
        name = self.settings.registry.model_name
        if name:
            tags = {"experiment": self.settings.name, "arm": cell.arm, "seed": cell.seed,
                    "dataset_digest": cell.data_report["digest"], "parent_run_id": self.parent.info.run_id,
                    **{f"{split}_accuracy": v["accuracy"] for split, v in result["evaluation"].items()}}
            version, source = register_model_dir(result["model_dir"], name, tags,
                                                 description=f"experiment {self.settings.name}: {cell.name}")
            result["mlflow"].update(model_name=name, model_version=str(version), model_source=source)
        mlflow.end_run()

    def end_cell_failed(self) -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status="FAILED")

    def finish(self, report: dict, folder: Path) -> None:
        if not self.enabled:
            return
        import mlflow

        from ..tracking import metric_name

        for split, summary in report["sets"].items():
            metrics = {}
            for arm, values in summary["arms"].items():
                metrics.update({metric_name("experiment", split, arm, k): values[k] for k in ("mean", "low", "high")})
            for arm, values in summary["differences"].items():
                metrics.update({metric_name("experiment", split, f"{arm}_minus_{summary['reference']}", k): values[k]
                                for k in ("mean", "low", "high", "mde")})
            mlflow.log_metrics(metrics)
        for name in ("report.json", "report.md", "comparison.png"):
            mlflow.log_artifact(str(folder / name), "experiment")
        mlflow.end_run()


def run_experiment(settings: ExperimentSettings, recipe: RecipeParameters, out: Path | None = None,
                   tracking_uri: str | None = None, log: Callable[[str], None] = print,
                   progress: bool = True) -> dict:
    """Run every missing cell, then report on all of them; returns the report (see `report`)."""
    work = Path(out) if out else state_home() / "experiments" / settings.name
    work.mkdir(parents=True, exist_ok=True)
    pool = prepare_pool(recipe, work, state_home() / "data", progress)
    log(f"pool: {pool.report['pool']} rows ({pool.report['clear']} clear), held-out split {pool.report['heldout']}")
    rows = {(arm.name, seed): arm_rows(pool.scored, arm, recipe.select, recipe.augment, seed)
            for arm in settings.arms for seed in settings.seeds}
    seen = {sha for frame, _ in rows.values() for sha in frame["image_sha256"].dropna()}
    sets = evaluation_sets(settings, pool.heldout, seen)
    log("evaluation sets: " + ", ".join(f"{k} {len(v)} problems" for k, v in sets.items()))
    sets_digest = _digest({k: [p["pid"] for p in v] for k, v in sets.items()})
    bases = base_models(settings, recipe, work, {s: [rows[(a.name, s)][0] for a in settings.arms]
                                                  for s in settings.seeds})
    tracker = Tracker(settings, work, tracking_uri)
    results, trained, reused = {}, [], []
    for seed in settings.seeds:
        base, base_key = bases[seed]
        train = train_settings(recipe.train, settings.compute, seed, work / "encoded")
        for arm in settings.arms:
            frame, data_report = rows[(arm.name, seed)]
            key = cell_key(data_report["digest"], base_key, train, settings.evaluate, sets_digest)
            cell = Cell(arm.name, seed, frame, data_report, work / "cells" / arm.name / f"seed-{seed}", key)
            result = cell.result()
            if result is not None:
                reused.append(cell.name)
                tracker.reused(cell, result)
                log(f"{cell.name}: reused (key {key})")
            else:
                for part in ("data", "train", "eval", "result.json"):   # what a killed attempt left
                    path = cell.folder / part
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                tracker.start_cell(cell)
                try:
                    result = run_cell(cell, base, train, sets, settings.evaluate, log)
                except BaseException:
                    tracker.end_cell_failed()
                    raise
                tracker.finish_cell(cell, result)
                (cell.folder / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
                trained.append(cell.name)
            results[(arm.name, seed)] = result
    report = build_report(settings, results, sets, trained, reused, pool.report)
    report["mlflow_parent_run"] = tracker.url
    write_report(report, work)
    tracker.finish(report, work)
    return report


def build_report(settings: ExperimentSettings, results: dict, sets: dict, trained: list[str], reused: list[str],
                 pool_report: dict) -> dict:
    summaries = {}
    for split in sets:
        matrices = {arm.name: np.array([results[(arm.name, s)]["evaluation"][split]["correct"] for s in settings.seeds])
                    for arm in settings.arms}
        summaries[split] = summarize(matrices, settings.reference, settings.stats.resamples,
                                     settings.stats.confidence, settings.stats.seed) | {"problems": len(sets[split])}
    cells = [{"arm": arm.name, "seed": s, "rows": results[(arm.name, s)]["data"]["rows"],
              "by_aug_type": results[(arm.name, s)]["data"]["by_aug_type"],
              "data_digest": results[(arm.name, s)]["data"]["digest"],
              "train": results[(arm.name, s)]["train"], "model_dir": results[(arm.name, s)]["model_dir"],
              "mlflow": results[(arm.name, s)].get("mlflow"),
              "accuracy": {k: v["accuracy"] for k, v in results[(arm.name, s)]["evaluation"].items()}}
             for arm in settings.arms for s in settings.seeds]
    return {"experiment": settings.name, "seeds": settings.seeds, "arms": [a.model_dump() for a in settings.arms],
            "reference": settings.reference, "compute": settings.compute.model_dump(), "pool": pool_report,
            "sets": summaries, "cells": cells, "trained": trained, "reused": reused}
