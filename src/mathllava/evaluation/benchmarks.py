"""One adapter per benchmark with the same surface: load problems, judge responses into the
benchmark's own predictions and scores files, re-score a predictions file, and summarise scores as
percentages per category (for MLflow metrics and bar charts).

Every problem is a dict of one shape (the "internal problem type"): benchmark, pid, query,
image_path, question, choices, answer, question_type, answer_type, precision, unit, metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import mathv, mathvista, mmmu
from .runner import score_responses


@dataclass
class Judged:
    predictions: Any  # the benchmark's own output content (dict or list of JSONL lines)
    scores: dict  # the benchmark's own scores layout
    accuracy: float  # overall, percent
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. {"task": {...}} in percent
    extra: dict = field(default_factory=dict)


class MathVistaBenchmark:
    name = "mathvista"
    predictions_name = "predictions.json"
    chart_groups = ("task", "skills")

    def load(self, data: str | Path, limit: int | None = None, images_dir: str | Path | None = None,
             work_dir: str | Path | None = None) -> list[dict]:
        path = Path(data)
        return mathvista.load_mathvista(path / "testmini.json" if path.is_dir() else path, images_dir, limit)

    def judge(self, problems: list[dict], responses: list[str], model: str = "model",
              llm_extract: Callable[[str, str], str] | None = None) -> Judged:
        results, scores = score_responses(problems, responses, llm_extract)
        methods: dict[str, int] = {}
        for r in results.values():
            methods[r["extraction_method"]] = methods.get(r["extraction_method"], 0) + 1
        keep = ("benchmark", "record", "image_path")
        predictions = {pid: {k: v for k, v in r.items() if k not in keep} for pid, r in results.items()}
        return self._summarise(predictions, scores, {"extraction_methods": methods})

    def rescore(self, predictions: Mapping[str, Any], **_: Any) -> Judged:
        updated, scores = mathvista.rescore(predictions)
        return self._summarise(updated, scores)

    def _summarise(self, predictions: dict, scores: dict, extra: dict | None = None) -> Judged:
        groups = {key: {k: float(v["accuracy"]) for k, v in scores.get(key, {}).items()}
                  for key in mathvista.BREAKDOWN_KEYS if key in scores}
        return Judged(predictions, scores, float(scores["average"]["accuracy"]), groups, extra or {})

    def read_predictions(self, path: str | Path) -> dict:
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def write_predictions(self, path: str | Path, predictions: Any) -> None:
        Path(path).write_text(json.dumps(predictions, indent=2, ensure_ascii=False), encoding="utf-8")


class MathVBenchmark:
    name = "mathv"
    predictions_name = "predictions.jsonl"
    chart_groups = ("subject", "level")

    def load(self, data: str | Path, limit: int | None = None, images_dir: str | Path | None = None,
             work_dir: str | Path | None = None) -> list[dict]:
        return mathv.load_mathv(data, limit)

    def judge(self, problems: list[dict], responses: list[str], model: str = "model", **_: Any) -> Judged:
        lines = [{"id": p["pid"], "model": model, "response": r,
                  **{k: p["record"][k] for k in ("answer", "options", "subject", "level")}}
                 for p, r in zip(problems, responses)]
        judged, scores = mathv.score_lines(lines, regen_answer=True)
        return self._summarise(judged, scores)

    def rescore(self, predictions: list[dict], data: str | Path | None = None, regen_answer: bool = True,
                **_: Any) -> Judged:
        truth = {str(r["id"]): r for r in mathv.read_records(data)} if data else None
        judged, scores = mathv.score_lines(predictions, truth, regen_answer)
        return self._summarise(judged, scores)

    def _summarise(self, lines: list[dict], scores: dict) -> Judged:
        subjects, levels = {}, {}
        for key, value in scores.items():
            accuracy = mathv.parse_score(value)[2]
            if key.startswith("-level") and "_" not in key:
                levels[key.lstrip("-")] = accuracy
            elif not key.startswith("-") and "_level" not in key:
                subjects[key] = accuracy
        return Judged(lines, scores, mathv.parse_score(scores["-all"])[2] if "-all" in scores else 0.0,
                      {"subject": subjects, "level": levels})

    def read_predictions(self, path: str | Path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_predictions(self, path: str | Path, predictions: list[dict]) -> None:
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in predictions)
        Path(path).write_text(text, encoding="utf-8")


class MMMUBenchmark:
    name = "mmmu"
    predictions_name = "predictions.json"
    chart_groups = ("discipline", "subject")

    def load(self, data: str | Path, limit: int | None = None, images_dir: str | Path | None = None,
             work_dir: str | Path | None = None) -> list[dict]:
        image_dir = images_dir or Path(work_dir or ".") / "mmmu_images"
        return mmmu.load_mmmu(data, image_dir, limit=limit)

    def judge(self, problems: list[dict], responses: list[str], model: str = "model", **_: Any) -> Judged:
        predictions = mmmu.predictions_from_responses(problems, responses)
        answers = mmmu.answer_dict(problems)
        return self.rescore(predictions, answers=answers)

    def rescore(self, predictions: Mapping[str, Any], answers: Mapping[str, Any] | str | Path | None = None,
                **_: Any) -> Judged:
        if answers is None:
            raise ValueError("MMMU scoring needs the answers (answer_dict_val.json layout): pass --answers")
        if not isinstance(answers, Mapping):
            answers = json.loads(Path(answers).read_text(encoding="utf-8"))
        judgements, scores = mmmu.score(predictions, answers)
        disciplines = {k.removeprefix("Overall-"): v["acc"] * 100 for k, v in scores.items()
                       if k.startswith("Overall-") and v["num"]}
        subjects = {k: v["acc"] * 100 for k, v in scores.items() if not k.startswith("Overall")}
        return Judged(dict(predictions), scores, scores["Overall"]["acc"] * 100,
                      {"discipline": disciplines, "subject": subjects},
                      {"answers": dict(answers), "judgements": judgements})

    def read_predictions(self, path: str | Path) -> dict:
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def write_predictions(self, path: str | Path, predictions: Any) -> None:
        Path(path).write_text(json.dumps(predictions, indent=2, ensure_ascii=False), encoding="utf-8")


BENCHMARKS = {b.name: b for b in (MathVistaBenchmark(), MathVBenchmark(), MMMUBenchmark())}


def headline(scores: Mapping[str, Any]) -> str:
    """The overall line in each benchmark's own terms."""
    if "average" in scores:
        avg = scores["average"]
        return f"{avg['correct']}/{avg['total']} = {avg['accuracy']}%"
    if "-all" in scores:
        return scores["-all"]
    if "Overall" in scores:
        return f"{scores['Overall']['acc']:.3f} of {scores['Overall']['num']}"
    return "no scores"


def get(name: str):
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}") from None
