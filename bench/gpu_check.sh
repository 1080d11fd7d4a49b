#!/usr/bin/env bash
# The GPU checks of the fine-tuning issue, as one prepared script for a session lent a GPU machine
# (the device image has torch, transformers 5.17, accelerate, peft, pandas, pillow, pyyaml; not
# pydantic, deepspeed, mlflow or zenml).
#
#   bash bench/gpu_check.sh prepare   # here, with network: wheels into .whl/ (git-ignored via .git/info/exclude)
#   bash bench/gpu_check.sh run       # there: `run` with carry [".whl"], timeout ~540 s; figures land in $OUT
#
# `run` does, in order: the training-throughput bench on the 1.35B shape of gpu-measurements.md (bare
# loop, Trainer path, Trainer + ZeRO-3 on one GPU), one `mathllava train` run with ZeRO-3 on a tiny
# base, and generation with the result through the one generation path on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    transformers==5.24.0 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2 \
    hjson==3.1.0
  python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
  ls -la .whl ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export TORCH_EXTENSIONS_DIR=/tmp/torch_ext OUT=${OUT:-/tmp/out}
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
  timeout 330 python3 bench/train_throughput.py --shape llava-336-tinyllama --device cuda --image-size 640x480 \
    --samples 1024 --images 1024 --words 80 --batch-size 16 --steps 40 --repeats 1 --workers 8 \
    --deepspeed configs/deepspeed/zero3.json --json "$OUT/train_throughput.json" 2>&1 | tee "$OUT/train_throughput.txt"
  python3 -c "
import json, pathlib, sys
sys.path.insert(0, 'bench'); from train_throughput import make_data
from mathllava.train.tiny import init_tiny
d = make_data(pathlib.Path('/tmp/z3'), 64, 32, (336, 336), 20); init_tiny('/tmp/z3/base')"
  timeout 120 python3 -m mathllava.train --base /tmp/z3/base --data /tmp/z3/data.json --image-root /tmp/z3/images \
    --out /tmp/z3/out --deepspeed configs/deepspeed/zero3.json --max-steps 2 --device cuda 2>&1 | tail -n 5 \
    | tee "$OUT/zero3_step.txt"
  cp /tmp/z3/out/summary.json "$OUT/zero3_summary.json"
  timeout 60 python3 -c "
import json, time
from mathllava.evaluation.backends import Request, TransformersBackend
records = json.load(open('/tmp/z3/data.json'))
requests = [Request(r['conversations'][0]['value'][8:], '/tmp/z3/images/' + r['image']) for r in records]
backend = TransformersBackend('/tmp/z3/out/model', batch_size=32, max_new_tokens=16, device='cuda')
backend.generate(requests[:8]); start = time.perf_counter(); replies = backend.generate(requests)
print(backend.model.device, backend.model.dtype, f'{len(requests) / (time.perf_counter() - start):.1f} problems/s', replies[:3])
" 2>&1 | tail -n 3 | tee "$OUT/generation.txt" ;;
*)
  echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
