"""Score registered versions side by side: each version's model fetched from the registry and run
through the one generation path on the same evaluation sets, judged by each benchmark's own rules."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

from ..evaluation.backends import Request, TransformersBackend
from ..evaluation.benchmarks import get as get_benchmark
from ..evaluation.runner import SPLIT_BENCHMARK, problem_from_row
from ..evaluation.settings import EvalSettings


def evaluation_sets(settings: EvalSettings) -> dict[str, list[dict]]:
    from ..evaluation.mathv import load_mathv
    from ..data.ingest import ingest_source

    sets = {}
    if settings.math_v_dir and (Path(settings.math_v_dir) / "images").is_dir():
        sets["mathv"] = load_mathv(settings.math_v_dir, settings.math_v_limit)
    if settings.heldout_annotations:
        path = Path(settings.heldout_annotations)
        manifest, _ = ingest_source(path, path.parent / "images", path.parent.name)
        sets["heldout"] = [problem_from_row(r) | {"image_path": r["image_path"]} for r in manifest.to_dict("records")]
    if not sets:
        raise ValueError("no evaluation set: set promotion.eval.math_v_dir (with images/) or heldout_annotations")
    return sets


def scorer(settings: EvalSettings, tracking_uri: str | None = None):
    """`evaluate(client, name, versions) -> {version: {set: accuracy}}` for `promotion.promote`."""
    sets = evaluation_sets(settings)

    def evaluate(client, name: str, versions: list[str]) -> dict[str, dict[str, float]]:
        import mlflow

        scores = {}
        with tempfile.TemporaryDirectory(prefix="mathllava-promote-") as tmp:
            for version in versions:
                source = client.get_model_version(name, version).source
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=f"{tmp}/v{version}",
                                                            tracking_uri=tracking_uri)
                backend = TransformersBackend(local, batch_size=settings.batch_size,
                                              max_new_tokens=settings.max_new_tokens, device=settings.device)
                scores[version] = {}
                for split, problems in sets.items():
                    responses = backend.generate([Request(p["query"], p["image_path"]) for p in problems],
                                                 progress=f"{split} v{version}")
                    judged = get_benchmark(SPLIT_BENCHMARK[split]).judge(problems, responses, model=f"v{version}")
                    scores[version][split] = judged.accuracy
                del backend
                gc.collect()
        return scores

    evaluate.sets = {split: len(problems) for split, problems in sets.items()}
    return evaluate
