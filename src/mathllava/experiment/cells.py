"""One cell of an experiment: an arm's data at one seed, trained on the seed's base model at the
experiment's compute, then scored on every evaluation set with the benchmark's own rules. A finished
cell leaves `result.json`, keyed by its data digest and settings: a rerun with the same key reuses it."""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..evaluation.backends import TransformersBackend
from ..evaluation.benchmarks import get as get_benchmark
from ..evaluation.harness import generate_resumable
from ..evaluation.runner import SPLIT_BENCHMARK
from ..formats import export_llava
from ..train.config import TrainSettings
from ..train.launch import train
from .config import ComputeSettings, EvaluateSettings


@dataclass
class Cell:
    arm: str
    seed: int
    rows: pd.DataFrame
    data_report: dict
    folder: Path
    key: str

    @property
    def name(self) -> str:
        return f"{self.arm}/seed-{self.seed}"

    def result(self) -> dict | None:
        """The finished cell's result when its key matches, else None (not run, killed, or stale)."""
        path = self.folder / "result.json"
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return result if result.get("key") == self.key else None


def cell_key(data_digest: str, base_key: str, settings: TrainSettings, evaluate: EvaluateSettings,
             sets_digest: str) -> str:
    parts = {"data": data_digest, "base": base_key, "train": settings.model_dump(mode="json"),
             "evaluate": evaluate.model_dump(mode="json"), "sets": sets_digest}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def train_settings(base: TrainSettings, compute: ComputeSettings, seed: int, cache_dir: Path) -> TrainSettings:
    """The recipe's training settings at the experiment's compute: a fixed number of steps and batch,
    every sequence padded to `seq_len`, the seed's initialisation and data order."""
    return base.model_copy(update={"max_steps": compute.steps, "batch_size": compute.batch_size,
                                   "gradient_accumulation_steps": 1, "max_length": compute.seq_len,
                                   "pad_to": "max_length", "group_by_length": False, "seed": seed,
                                   "save_steps": max(compute.steps, 1), "cache_dir": str(cache_dir)})


def scores(judged, split: str, problems: list[dict]) -> list[int]:
    """1/0 per problem, in the order of `problems`, from a benchmark's judged output."""
    if SPLIT_BENCHMARK[split] == "mathv":
        right = {str(line["id"]): bool(line["correct"]) for line in judged.predictions}
    else:
        right = {pid: bool(p["true_false"]) for pid, p in judged.predictions.items()}
    return [int(right[p["pid"]]) for p in problems]


def run_cell(cell: Cell, base: Path, settings: TrainSettings, sets: dict[str, list[dict]],
             evaluate: EvaluateSettings, log=print) -> dict:
    """Train and score `cell`; writes and returns its result (the MLflow run, if any, is the caller's)."""
    from ..tracking import log_metrics

    data_dir = cell.folder / "data"
    export_llava(cell.rows.to_dict("records"), data_dir)
    log(f"{cell.name}: training {len(cell.rows)} rows for {settings.max_steps} steps")
    out = cell.folder / "train"
    result = train(base, data_dir / "conversations.json", data_dir / "images", out, settings)
    summary = result.summary
    backend = TransformersBackend(result.model_dir, batch_size=evaluate.batch_size,
                                  max_new_tokens=evaluate.max_new_tokens, device=evaluate.device)
    evaluation = {}
    for split, problems in sets.items():
        benchmark = get_benchmark(SPLIT_BENCHMARK[split])
        responses, _stats = generate_resumable(problems, backend, cell.folder / "eval" / split, benchmark.name,
                                               chunk_size=evaluate.batch_size, progress=False)
        judged = benchmark.judge(problems, responses, model=cell.name)
        correct = scores(judged, split, problems)
        evaluation[split] = {"accuracy": 100 * sum(correct) / len(correct), "correct": correct,
                             "final_line": sum("The answer is" in r for r in responses) / len(responses)}
        log_metrics({"accuracy": evaluation[split]["accuracy"],
                     "final_line_share": evaluation[split]["final_line"]}, section=f"eval/{split}")
        log(f"{cell.name}: {split} {evaluation[split]['accuracy']:.2f}% of {len(problems)}")
    del backend
    gc.collect()
    tokens = {"positions": summary["global_step"] * settings.batch_size * settings.max_length,
              "mean_tokens_per_sequence": summary.get("mean_tokens")}
    return {"key": cell.key, "arm": cell.arm, "seed": cell.seed, "data": cell.data_report,
            "model_dir": str(result.model_dir),
            "train": {k: summary.get(k) for k in ("global_step", "epochs", "train_loss", "loss_first", "loss_last",
                                                  "samples", "truncated", "dropped", "runtime_s")} | tokens,
            "evaluation": evaluation}
