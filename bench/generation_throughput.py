"""Generation throughput (problems/s) of the tiny model on Math-V testmini for batch sizes 1, 8
and 32, through the local transformers backend, and through `mathllava serve` + the HTTP client.

    python bench/generation_throughput.py [--problems 96] [--max-new-tokens 12] [--model-dir DIR]

Without --model-dir an untrained tiny model with the pipeline's default shape is built in code
(throughput does not depend on the weights). Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def tiny_model_dir(problems: list[dict], out: Path) -> Path:
    from mathllava.train.config import load_sections
    from mathllava.train.tiny import init_tiny

    model = load_sections(ROOT / "configs" / "local.yaml")[0]
    return init_tiny(out, model.tiny, [p["query"] for p in problems])


def main(argv: list[str] | None = None) -> None:
    import torch

    from mathllava.evaluation.backends import OpenAIChatBackend, Request, TransformersBackend
    from mathllava.evaluation.mathv import load_mathv
    from mathllava.serve import BackgroundServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "math-v-testmini"))
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--model-dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    problems = load_mathv(args.data, args.problems)
    requests = [Request(p["query"], p["image_path"]) for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else tiny_model_dir(problems, Path(tmp) / "tiny-llava")
        rows = []
        for batch_size in (1, 8, 32):
            backend = TransformersBackend(model_dir, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                                          device=args.device)
            backend.generate(requests[: min(8, len(requests))])  # warm-up
            start = time.perf_counter()
            backend.generate(requests)
            rows.append(("transformers", f"batch {batch_size}", len(requests) / (time.perf_counter() - start)))
        with BackgroundServer(model_dir, model_name="tiny", device=args.device) as server:
            for concurrency in (1, 8):
                client = OpenAIChatBackend(server.url, "tiny", max_tokens=args.max_new_tokens, concurrency=concurrency)
                client.generate(requests[:4])
                start = time.perf_counter()
                client.generate(requests)
                rows.append(("serve + HTTP", f"concurrency {concurrency}", len(requests) / (time.perf_counter() - start)))
    print(f"\n{len(requests)} Math-V testmini problems, max_new_tokens={args.max_new_tokens}, "
          f"torch threads={args.threads}, model={'given' if args.model_dir else 'tiny (built in code)'}")
    print(f"{'backend':<14} {'setting':<16} {'problems/s':>10}")
    for backend, setting, rate in rows:
        print(f"{backend:<14} {setting:<16} {rate:>10.1f}")


if __name__ == "__main__":
    main()
