"""Augmentation throughput: the model generators (AskImg, CompQ, RephQ, SimpQ, then the consistency
judge) over `mathllava serve` on 127.0.0.1 with a tiny model built in code, for N seed images (Math-V
testmini's real figures when ../shared/data/math-v-testmini is there, else synthetic ones). Runs
twice: cold (every request sent) and again (every reply from the cache). Prints requests/s, tokens,
and kept/dropped ratios with drops by reason. An untrained tiny model writes no valid JSON, so its
replies are all counted as malformed: the figures measure the client, server, cache and parser,
not the quality of a real VLM.

    python bench/augment_throughput.py [--images 40] [--concurrency 4] [--max-tokens 32] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def seed_rows(n: int, work: Path):
    """Manifest rows for n seed images: Math-V testmini problems, else the synthetic generator's."""
    import pandas as pd

    mathv = ROOT.parent / "shared" / "data" / "math-v-testmini"
    if mathv.exists():
        from mathllava.evaluation.mathv import load_mathv

        rows = []
        for p in load_mathv(mathv, n):
            rows.append({"id": f"mathv-{p['pid']}", "source": "mathv", "image": p["image"], "image_path": p["image_path"],
                         "image_sha256": hashlib.sha256(Path(p["image_path"]).read_bytes()).hexdigest(),
                         "question": p["question"], "answer": p["answer"], "question_type": p["question_type"],
                         "answer_type": p["answer_type"], "precision": p["precision"],
                         "choices": json.dumps(p["choices"]) if p["choices"] else None, "unit": None,
                         "skills": json.dumps(p["metadata"]["skills"]), "scene": None, "question_key": None,
                         "parent_id": None, "aug_type": "original"})
        return pd.DataFrame(rows), "Math-V testmini"
    from mathllava.data.ingest import ingest_source
    from mathllava.data.synthetic import GeneratorConfig, generate

    path = generate(work / "synthetic", GeneratorConfig(n_images=n, seed=5, image_size=160))
    rows, _ = ingest_source(path, path.parent / "images")
    return rows.assign(scene=None), "synthetic (scenes hidden)"


def main(argv: list[str] | None = None) -> dict:
    import torch

    from mathllava.augment import AugmentSettings, augment, prompts
    from mathllava.serve import BackgroundServer
    from mathllava.train.config import load_sections
    from mathllava.train.tiny import init_tiny

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model-dir")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="augment-bench-"))
    rows, origin = seed_rows(args.images, work)
    model_dir = args.model_dir
    if model_dir is None:
        seed = {"question": "What is x?", "choices": None, "answer": "1"}
        texts = [prompts.askimg(5, []), *(b(1, seed) for b in prompts.PROMPTS.values()), *rows["question"]]
        model_dir = init_tiny(work / "tiny-llava", load_sections(ROOT / "configs" / "local.yaml")[0].tiny, texts)
    results = {}
    with BackgroundServer(model_dir, model_name="tiny", device="cpu") as server:
        cfg = AugmentSettings.model_validate({
            "generator": "endpoint", "per_seed": {"askimg": 5, "compq": 1, "rephq": 1, "simpq": 1},
            "endpoint": {"base_url": server.url, "model": "tiny", "max_tokens": args.max_tokens, "temperature": 0.0},
            "concurrency": args.concurrency, "cache_dir": str(work / "cache"), "progress": False})
        for run in ("cold", "cached"):
            _, report = augment(rows, cfg)
            results[run] = report
    print(f"seed images: {len(rows)} ({origin}); tiny model, max_tokens {args.max_tokens}, "
          f"concurrency {args.concurrency}, CPU threads 1")
    print(f"{'run':8} {'requests':>8} {'cached':>7} {'seconds':>8} {'req/s':>7} {'tokens':>7} {'kept':>5} "
          f"{'dropped':>7} {'kept ratio':>10}  dropped by reason")
    for run, r in results.items():
        print(f"{run:8} {r['requests']:8d} {r['cache_hits']:7d} {r['seconds']:8.2f} {r['requests_per_s'] or 0:7.2f} "
              f"{r['tokens']:7d} {r['kept']:5d} {r['dropped_total']:7d} {r['kept_ratio'] or 0:10.3f}  "
              f"{json.dumps(r['dropped'])} {json.dumps(r['malformed'])}")
    return results


if __name__ == "__main__":
    main()
