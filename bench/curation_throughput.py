"""Curation throughput: ingest + validate + score, streamed, against the PIL decode rate of the same images.

    python bench/curation_throughput.py [--rows 36000 360000] [--images 2000]

Writes a MathV360K-style JSONL of N rows over a set of distinct synthetic images (rows repeat
images, as MathV360K's 360K questions share 40K images: 9 rows per image), then runs, in a fresh process per size:
the streaming reader and ingest (size cap, chunked sha256, decode, phash, per distinct image), the
Great Expectations suite per 20,000-row batch, and the learned scorer (thumbnail, layout cues, CNN,
per distinct image), writing valid rows with their scores to parquet. Prints records/s, distinct
images/s, the single-thread PIL decode rate of the same images, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path, images: int) -> Path:
    from mathllava.data.synthetic import GeneratorConfig, generate

    data = work / "images"
    if not (data / "data.json").exists():
        generate(data, GeneratorConfig(n_images=images, seed=3, image_size=224, unclear_fraction=0.1))
    return data / "data.json"


def write_rows(source: Path, rows: int, out: Path) -> Path:
    records = json.loads(source.read_text())
    with out.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            record = dict(records[i % len(records)])
            record["id"] = f"row-{i:07d}"
            handle.write(json.dumps(record) + "\n")
    return out


def decode_rate(paths: list[str]) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            img.convert("RGB").load()
    return len(paths) / (time.perf_counter() - start)


def child(annotations: str, image_root: str, out: str) -> dict:
    import torch

    from mathllava.data.cli import ParquetSink
    from mathllava.data.ingest import MANIFEST_COLUMNS, ImageLimits, SourceSpec, iter_batches
    from mathllava.data.scorer import CachedScorer, ScorerSettings, build_model
    from mathllava.data.validation import StreamValidator, ValidationRules

    import great_expectations.expectations as _gxe  # imports are not part of the measured time

    del _gxe
    torch.set_num_threads(1)
    settings = ScorerSettings()
    scorer = CachedScorer(build_model(settings.levels), settings.side)  # throughput only: untrained weights
    validator = StreamValidator(ValidationRules())
    sink = ParquetSink(Path(out), MANIFEST_COLUMNS + ["complexity", "clarity_score"])
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    rows = 0
    spec = SourceSpec(annotations=annotations, image_root=image_root, name="bench")
    for manifest, rejected in iter_batches([spec], ImageLimits(), batch_size=20000):
        good, _bad = validator.feed(manifest, rejected)
        levels, clear = scorer.score(good["image_path"].tolist())
        sink.write(good.assign(complexity=levels.astype(str), clarity_score=clear.astype(str)))
        rows += len(manifest) + len(rejected)
    sink.close()
    seconds = time.perf_counter() - start
    return {"rows": rows, "valid": validator.valid, "seconds": seconds, "records_per_s": rows / seconds,
            "distinct_images": len(scorer.cache), "rss_before_mb": rss_start / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[36_000, 360_000])
    parser.add_argument("--images", type=int, default=4000, help="distinct images (MathV360K: 9 rows per image)")
    parser.add_argument("--work", default=None, help="keep the generated files here (default: a temp folder)")
    parser.add_argument("--child", nargs=3, metavar=("ANNOTATIONS", "IMAGE_ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return []
    work = Path(args.work or tempfile.mkdtemp(prefix="curation-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = prepare(work, args.images)
    image_root = source.parent / "images"
    paths = sorted(str(p) for p in image_root.rglob("*.png"))
    rate = max(decode_rate(paths) for _ in range(2))
    print(f"PIL decode (open + RGB + load, one thread): {rate:.0f} images/s over {len(paths)} distinct images")
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    for rows in args.rows:
        annotations = write_rows(source, rows, work / f"rows-{rows}.jsonl")
        done = subprocess.run([sys.executable, __file__, "--child", str(annotations), str(image_root),
                               str(work / f"valid-{rows}.parquet")], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["x_decode_rate"] = result["records_per_s"] / rate
        results.append(result)
        print(f"{rows:>7} rows: {result['records_per_s']:,.0f} records/s = {result['x_decode_rate']:.2f}x the decode "
              f"rate ({result['seconds']:.1f} s; {result['distinct_images']} distinct images, each hashed, decoded, "
              f"phashed, thumbnailed and scored once); peak RSS {result['peak_rss_mb']:.0f} MB "
              f"(after imports {result['rss_before_mb']:.0f} MB)")
    return results


if __name__ == "__main__":
    main()
