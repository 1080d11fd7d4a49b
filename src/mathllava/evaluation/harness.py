"""Resumable benchmark runs: generate, store every raw response as it arrives, judge, write the
benchmark's own files, and log the results to MLflow.

Layout of an output folder:
    run.json           what produced the responses (benchmark, backend, generation settings)
    responses.jsonl    one {"pid", "response"} line per finished problem, appended and flushed
    predictions.json(l) the benchmark's own output format
    scores.json        the benchmark's own scores layout
    summary.json       overall and per-category accuracy (percent)

A rerun into the same folder skips the problems already in responses.jsonl, so a crash or Ctrl-C
costs at most the requests in flight. A folder made by another model or other generation settings
is refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .backends import Request
from .benchmarks import Judged


class RunMismatch(RuntimeError):
    pass


def read_responses(path: Path) -> dict[str, str]:
    """Stored responses by pid; a torn last line (killed mid-write) is ignored."""
    done: dict[str, str] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and "pid" in item and isinstance(item.get("response"), str):
            done[str(item["pid"])] = item["response"]
    return done


def _check_run(out_dir: Path, identity: dict) -> None:
    marker = out_dir / "run.json"
    if marker.exists():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous != identity:
            raise RunMismatch(f"{out_dir} holds responses from another run ({previous}); "
                              f"this run is {identity}. Use a new output folder.")
    else:
        marker.write_text(json.dumps(identity, indent=2), encoding="utf-8")


def generate_resumable(problems: list[dict], backend, out_dir: str | Path, benchmark: str,
                       chunk_size: int = 32, progress: bool = True) -> tuple[list[str], dict]:
    """Responses for every problem, in order, reusing those already stored in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run(out_dir, {"benchmark": benchmark, "backend": backend.describe()})
    store = out_dir / "responses.jsonl"
    if store.exists() and store.stat().st_size:
        with store.open("rb+") as f:  # end a torn last line so that appends stay valid
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    done = read_responses(store)
    pending = [p for p in problems if p["pid"] not in done]
    stats = {"reused": len(problems) - len(pending), "generated": 0, "seconds": 0.0}
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(problems), initial=stats["reused"], unit="problem", desc=f"{benchmark} generate",
                   dynamic_ncols=True)
    started = time.perf_counter()
    with store.open("a", encoding="utf-8") as sink:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start:start + chunk_size]

            def on_result(index: int, reply: str, chunk=chunk) -> None:
                pid = chunk[index]["pid"]
                done[pid] = reply
                sink.write(json.dumps({"pid": pid, "response": reply}, ensure_ascii=False) + "\n")
                sink.flush()
                stats["generated"] += 1
                if bar is not None:
                    bar.update(1)

            backend.generate([Request(p["query"], p.get("image_path")) for p in chunk], on_result)
    stats["seconds"] = time.perf_counter() - started
    if bar is not None:
        bar.close()
    stats["problems_per_second"] = stats["generated"] / stats["seconds"] if stats["seconds"] > 0 else None
    return [done[p["pid"]] for p in problems], stats


def run_benchmark(benchmark, problems: list[dict], backend, out_dir: str | Path, *, chunk_size: int = 32,
                  llm_extract: Callable[[str, str], str] | None = None, progress: bool = True) -> Judged:
    """Generate (resumably), judge with the benchmark's own rules and write its files."""
    out_dir = Path(out_dir)
    responses, stats = generate_resumable(problems, backend, out_dir, benchmark.name, chunk_size, progress)
    judged = benchmark.judge(problems, responses, model=backend.describe()["model"], llm_extract=llm_extract)
    judged.extra["generation"] = stats
    write_outputs(benchmark, judged, out_dir)
    return judged


def write_outputs(benchmark, judged: Judged, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"predictions": out_dir / benchmark.predictions_name, "scores": out_dir / "scores.json",
             "summary": out_dir / "summary.json"}
    benchmark.write_predictions(paths["predictions"], judged.predictions)
    paths["scores"].write_text(json.dumps(judged.scores, indent=2, ensure_ascii=False), encoding="utf-8")
    summary = {"benchmark": benchmark.name, "accuracy": judged.accuracy, "groups": judged.groups,
               **{k: v for k, v in judged.extra.items() if k in ("generation", "extraction_methods")}}
    paths["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    if "answers" in judged.extra:
        paths["answers"] = out_dir / "answers.json"
        paths["answers"].write_text(json.dumps(judged.extra["answers"], indent=2, ensure_ascii=False))
    return paths


def log_to_mlflow(benchmark, judged: Judged, out_dir: str | Path, prefix: str | None = None) -> dict[str, float]:
    """Per-category accuracy as metrics, the files as artifacts, and a bar chart per chart group
    (MathVista: task and skill; Math-V: subject and level; MMMU: discipline and subject). Needs an
    active MLflow run; returns the metrics logged."""
    import mlflow

    from .. import plots
    from ..tracking import log_figure

    from ..tracking import metric_name

    prefix = prefix or benchmark.name
    metrics = {metric_name("eval", prefix, "accuracy"): judged.accuracy}
    for group, values in judged.groups.items():
        for category, accuracy in values.items():
            metrics[metric_name("eval", prefix, group, category)] = accuracy
    generation = judged.extra.get("generation") or {}
    if generation.get("problems_per_second"):
        metrics[metric_name("eval", prefix, "problems_per_second")] = generation["problems_per_second"]
    mlflow.log_metrics(metrics)
    for path in Path(out_dir).glob("*.json*"):
        if path.name != "responses.jsonl":
            mlflow.log_artifact(str(path), artifact_path=f"evaluation/{prefix}")
    for group in benchmark.chart_groups:
        values = judged.groups.get(group)
        if values:
            log_figure(plots.accuracy_bars({"accuracy": values}, f"{prefix}: accuracy by {group}"),
                       f"evaluation/{prefix}/accuracy_by_{group}.png")
    return metrics
