"""Training throughput: the project's training path (`mathllava.train.runner.run_training`, the HF
Trainer with the encoded-once data) against a bare PyTorch loop of the same model and batch, in one
run. Prints samples/s, tokens/s, the ratio, and model FLOP utilisation against the matmul rate this
machine reaches (bf16 on a GPU, fp32 on CPU). Nothing is asserted.

    python bench/train_throughput.py                                  # CPU, the tiny default model
    python bench/train_throughput.py --shape llava-336-tinyllama --device cuda \\
        --image-size 640x480 --samples 1024 --steps 40 --deepspeed configs/deepspeed/zero3.json
    python bench/train_throughput.py --base /models/llava-1.5-7b-hf --device cuda --batch-size 8

Shapes: `tiny` is `configs/local.yaml`'s model; `llava-336-tinyllama` is a CLIP ViT-L/14-336 tower
with a TinyLlama-1.1B-shaped LM (1.35B parameters, the shape of `gpu-measurements.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPES = {
    "llava-336-tinyllama": dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                                vision_intermediate=4096, text_hidden=2048, text_layers=22, text_heads=32,
                                text_kv_heads=4, text_intermediate=5632, vocab_size=32000, max_positions=4096),
}
WORDS = ("angle", "triangle", "bar", "value", "chart", "sum", "largest", "circle", "radius", "area", "line", "point")


def make_data(out: Path, samples: int, images: int, size: tuple[int, int], words: int, seed: int = 0) -> Path:
    """PNG images (shapes on noise) and one-turn LLaVA records whose questions have `words` words."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        array = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(array)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            draw.rectangle([x, y, x + size[0] // 6, y + size[1] // 6], outline=(0, 0, 0), width=3)
        img.save(out / "images" / f"{i:05d}.png")
    records = []
    for i in range(samples):
        question = " ".join(rng.choice(WORDS) for _ in range(words))
        records.append({"id": f"b{i}", "image": f"{i % images:05d}.png", "conversations": [
            {"from": "human", "value": f"<image>\nQuestion: {question}?"},
            {"from": "gpt", "value": f"The answer is {rng.randrange(100)}."}]})
    path = out / "data.json"
    path.write_text(json.dumps(records))
    return path


def matmul_rate(device: str) -> tuple[float, str]:
    """Achieved matmul FLOP/s: bf16 8192^3 on a GPU, fp32 1024^3 on CPU (best of several)."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 10 * 2 * n ** 3 / (time.perf_counter() - start))
    return best, str(dtype).replace("torch.", "")


def flops_per_sample(model, tokens: float) -> float:
    """6·N·tokens for the trained part, 2·N·tokens for the frozen tower's forward pass."""
    vision = model.model.vision_tower
    frozen = sum(p.numel() for p in vision.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = vision.config
    vision_tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return 6 * trained * tokens + 2 * frozen * vision_tokens


def bare_loop(base: Path, encoded, batch_size: int, steps: int, device: str, bf16: bool) -> dict:
    """One pre-collated batch, autocast bf16 on GPU, AdamW (fused on GPU), no clipping or scheduler."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from mathllava.train.data import normalize_pixels
    from mathllava.train.trainer import trainer_classes

    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32).to(device)
    for p in model.model.vision_tower.parameters():
        p.requires_grad = False
    model.config.use_cache = False
    model.train()
    _, Collator = trainer_classes()
    batch = Collator(model.config.pad_token_id or 0, 8 if device == "cuda" else None)(
        [encoded[i] for i in range(batch_size)])
    batch["pixel_values"] = normalize_pixels(batch.pop("raw_pixels"), encoded.meta["normalizer"])
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5, fused=device == "cuda")
    warmup = max(1, steps // 5)
    start = None
    for step in range(steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = float(batch["attention_mask"].sum()) / batch_size
    result = {"samples_per_s": (steps - warmup) * batch_size / seconds, "tokens_per_sample": tokens,
              "flops_per_sample": flops_per_sample(model, tokens)}
    del model, optimizer
    return result


def project_path(base: Path, data: Path, image_root: Path, out: Path, batch_size: int, steps: int, device: str,
                 deepspeed: str | None, workers: int | str, threads: int) -> dict:
    """`python -m mathllava.train` in its own process (DeepSpeed leaves a process group and
    environment behind, which would turn later runs in this process into distributed ones)."""
    import subprocess

    import yaml

    train = {"batch_size": batch_size, "max_steps": steps, "learning_rate": 2e-5, "save_steps": 10 ** 6,
             "logging_steps": 20, "device": device, "deepspeed": deepspeed, "dataloader_workers": workers,
             "cache_dir": str(out.parent / "encoded")}
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({"train": train}))
    subprocess.run([sys.executable, "-m", "mathllava.train", "--base", str(base), "--data", str(data),
                    "--image-root", str(image_root), "--out", str(out), "--config", str(config)], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": str(threads)},
                   stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return {"samples_per_s": summary["steady_samples_per_s"], "tokens_per_sample": summary["mean_tokens"]}


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", *SHAPES])
    parser.add_argument("--base", help="a llava-hf checkpoint instead of a built shape")
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--image-size", default="224x224", help="WIDTHxHEIGHT of the generated PNGs")
    parser.add_argument("--words", type=int, default=24, help="words per question")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--deepspeed", help="also time the project's path with this DeepSpeed config")
    parser.add_argument("--workers", default="auto", help="dataloader workers of the project's path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path (interleaved); the best counts")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    from mathllava.llava import default_dtype, resolve_device
    from mathllava.train.config import load_sections
    from mathllava.train.encoded import ensure_encoded
    from mathllava.train.data import read_conversations
    from mathllava.train.tiny import TinyModelConfig, init_tiny

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads) if device == "cpu" else None
    bf16 = default_dtype(device) == torch.bfloat16
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    workers = int(args.workers) if str(args.workers).isdigit() else "auto"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "data", args.samples, args.images, (width, height), args.words)
        if args.base:
            base = Path(args.base)
        else:
            shape = load_sections(ROOT / "configs" / "local.yaml")[0].tiny if args.shape == "tiny" else \
                TinyModelConfig(**SHAPES[args.shape])
            records = json.loads(data.read_text())
            base = init_tiny(tmp / "base", shape, [t["value"] for r in records for t in r["conversations"]])
        started = time.perf_counter()
        encoded = ensure_encoded(data, read_conversations(data), data.parent / "images", base, 2048,
                                 tmp / "encoded", progress=False)  # the runs below reuse this cache
        encode_s = time.perf_counter() - started
        paths = {"bare PyTorch loop": lambda r: bare_loop(base, encoded, args.batch_size, args.steps, device, bf16),
                 "mathllava train (Trainer)": lambda r: project_path(
                     base, data, data.parent / "images", tmp / f"run{r}", args.batch_size, args.steps, device, None,
                     workers, args.threads)}
        if args.deepspeed:
            paths[f"mathllava train + {Path(args.deepspeed).name}"] = lambda r: project_path(
                base, data, data.parent / "images", tmp / f"run-ds{r}", args.batch_size, args.steps, device,
                args.deepspeed, workers, args.threads)
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):  # interleaved, best of each: robust to a busy neighbour
            for name, run in paths.items():
                row = run(repeat)
                if name not in best or row["samples_per_s"] > best[name]["samples_per_s"]:
                    best[name] = row
        rows = list(best.items())
        bare = best["bare PyTorch loop"]
        peak, dtype = matmul_rate(device)
    print(f"\n{device}, batch {args.batch_size}, {args.steps} steps (first fifth is warm-up), best of {args.repeats}, "
          f"{bare['tokens_per_sample']:.0f} tokens/sample, bf16 {bf16}, torch threads {torch.get_num_threads()}")
    print(f"encoded once: {len(encoded)} samples, {encoded.meta['images']} images in {encode_s:.1f} s; "
          f"measured {dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    print(f"{'path':<34} {'samples/s':>10} {'tokens/s':>10} {'x bare':>7} {'TFLOP/s':>8} {'MFU':>6}")
    figures = []
    for name, row in rows:
        rate = row["samples_per_s"]
        flops = rate * bare["flops_per_sample"] * row["tokens_per_sample"] / bare["tokens_per_sample"]
        figures.append({"path": name, "samples_per_s": rate, "tokens_per_s": rate * row["tokens_per_sample"],
                        "ratio": rate / bare["samples_per_s"], "tflops": flops / 1e12, "mfu": flops / peak})
        f = figures[-1]
        print(f"{name:<34} {rate:>10.1f} {f['tokens_per_s']:>10.0f} {f['ratio']:>7.2f} {f['tflops']:>8.2f} "
              f"{100 * f['mfu']:>5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": figures, "peak_flops": peak}, indent=2))


if __name__ == "__main__":
    main()
