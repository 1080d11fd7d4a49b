from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import step

from mathllava import plots
from mathllava.evaluation.backends import Request, TransformersBackend
from mathllava.evaluation.benchmarks import get as get_benchmark
from mathllava.evaluation.mathv import load_mathv
from mathllava.evaluation.settings import EvalSettings
from mathllava.evaluation.runner import SPLIT_BENCHMARK, frequent_answer_responses, problem_from_row
from mathllava.tracking import log_dict, log_figure, log_metrics
CONTENDERS = ("model", "base", "frequent")


def _score(name: str, problems: list[dict], responses: list[str], split: str, report: dict, results: dict) -> None:
    benchmark = get_benchmark(SPLIT_BENCHMARK[split])
    judged = benchmark.judge(problems, responses, model=name)
    first, second = benchmark.chart_groups
    entry = {"accuracy": judged.accuracy, "by_task": judged.groups.get(first, {}),
             "by_skill": judged.groups.get(second, {}), "scores": judged.scores}
    if "question_type" in judged.groups:
        entry["by_question_type"] = judged.groups["question_type"]
    report[split][name] = entry
    results[f"{split}/{name}"] = judged.predictions


@step
def evaluate_model(model_dir: Path, base_model: str, curated_dataset: pd.DataFrame, heldout_manifest: pd.DataFrame,
                   evaluate_cfg: EvalSettings) -> Tuple[Annotated[dict, "eval_report"], Annotated[dict, "predictions"]]:
    """Scores for the fine-tuned model, the base it started from and the frequent-answer baseline,
    through the one generation path, on the held-out synthetic split (MathVista rules) and on
    Math-V testmini when present (Math-V rules, per subject and level)."""
    import gc

    train_problems = [problem_from_row(r) for r in curated_dataset.to_dict("records")]
    seen = set(curated_dataset["image_sha256"].dropna())
    heldout = heldout_manifest[~heldout_manifest["image_sha256"].isin(seen)]
    splits = {"heldout": [problem_from_row(r) | {"image_path": r["image_path"]} for r in heldout.to_dict("records")]}
    math_v_dir = Path(evaluate_cfg.math_v_dir or "")
    if evaluate_cfg.math_v_dir and (math_v_dir / "images").is_dir():
        splits["mathv"] = load_mathv(math_v_dir, evaluate_cfg.math_v_limit)

    report: dict = {"heldout_overlap_removed": int(len(heldout_manifest) - len(heldout)),
                    **{split: {"problems": len(problems)} for split, problems in splits.items()}}
    results: dict = {}
    for name, directory in (("model", model_dir), ("base", base_model)):  # one model in memory at a time
        backend = TransformersBackend(directory, batch_size=evaluate_cfg.batch_size,
                                      max_new_tokens=evaluate_cfg.max_new_tokens, device=evaluate_cfg.device)
        for split, problems in splits.items():
            responses = backend.generate([Request(p["query"], p["image_path"]) for p in problems],
                                         progress=f"{split} {name}")
            _score(name, problems, responses, split, report, results)
        del backend
        gc.collect()
    for split, problems in splits.items():
        _score("frequent", problems, frequent_answer_responses(train_problems, problems), split, report, results)
    return report, results


@step
def log_evaluation(eval_report: dict, predictions: dict) -> None:
    """The evaluation's scores, charts and predictions in the pipeline run's MLflow run."""
    for split in [s for s in ("heldout", "mathv") if s in eval_report]:
        for name in CONTENDERS:
            entry = eval_report[split][name]
            log_metrics({f"{name}_accuracy": entry["accuracy"],
                         **{f"{name}_task_{k}": v for k, v in entry["by_task"].items()}}, section=f"eval/{split}")
        first, second = ("subject", "level") if split == "mathv" else ("task", "skill")
        for key, label in (("by_task", first), ("by_skill", second)):
            log_figure(plots.accuracy_bars({n: eval_report[split][n][key] for n in CONTENDERS},
                                           f"{split}: accuracy by {label}"), f"evaluation/{split}_by_{label}.png")
        log_dict(eval_report[split]["model"]["scores"], f"evaluation/{split}_scores.json")
    log_dict(predictions, "evaluation/predictions.json")
