"""`mathllava train` / `python -m mathllava.train` (the same code; the second form is what torchrun
starts on every worker):

    mathllava train --base DIR --data FILE --image-root DIR --out DIR [--mode full|lora]
        [--deepspeed FILE] [--epochs N] [--max-steps N] [--resume] [--config FILE] [--device auto|cpu|cuda]

    torchrun --nproc_per_node 8 -m mathllava.train --base ... --deepspeed configs/deepspeed/zero3.json ...

Settings come from the defaults (the paper's recipe), then `--config` (a pipeline run config or a file
with `model`/`train` sections), then the flags. With MLFLOW_TRACKING_URI set, rank 0 logs to MLflow
(MLFLOW_RUN_ID continues a given run, MLFLOW_EXPERIMENT_NAME picks the experiment).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--base", help="llava-hf checkpoint directory to start from (or model.base in --config)")
    parser.add_argument("--data", required=True, help="LLaVA conversation JSON or JSONL (the MathV360K format)")
    parser.add_argument("--image-root", required=True, help="folder the records' image paths are relative to")
    parser.add_argument("--out", required=True, help="output folder: checkpoints, final model, summary")
    parser.add_argument("--mode", choices=["full", "lora"])
    parser.add_argument("--deepspeed", help="DeepSpeed JSON config, e.g. configs/deepspeed/zero3.json")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from the last whole checkpoint in --out")
    parser.add_argument("--config", help="YAML with `model` and `train` sections (or a pipeline run config)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    return parser


def settings_from(args: argparse.Namespace):
    """(base directory, TrainSettings) from --config and the flags."""
    from ..settings import parse
    from .config import ModelSettings, TrainSettings, load_sections

    model, train = load_sections(args.config) if args.config else (ModelSettings(), TrainSettings())
    overrides = {k: v for k, v in {"mode": args.mode, "deepspeed": args.deepspeed, "epochs": args.epochs,
                                   "max_steps": args.max_steps, "device": args.device}.items() if v is not None}
    train = parse(TrainSettings, {**train.model_dump(), **overrides}, "train", "command line")
    base = args.base or model.base
    if not base:
        raise ValueError("--base is required (or model.base in --config)")
    return base, train


def _mlflow_run(rank0: bool, params: dict):
    """Rank 0's MLflow run when MLFLOW_TRACKING_URI is set (MLFLOW_RUN_ID continues a given run,
    which keeps its experiment and parameters); nothing otherwise."""
    import contextlib

    if not (rank0 and os.environ.get("MLFLOW_TRACKING_URI")):
        return contextlib.nullcontext()
    import mlflow

    from ..tracking import log_params

    @contextlib.contextmanager
    def active():
        continued = bool(os.environ.get("MLFLOW_RUN_ID"))
        if not continued:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "mathllava-train"))
        with mlflow.start_run(run_name=os.environ.get("MLFLOW_RUN_NAME")):
            if not continued:
                log_params(params)
            yield

    return active()


def run(args: argparse.Namespace) -> int:
    import warnings

    from .data import DataError
    from .runner import RunConflict, run_training

    # DeepSpeed's ZeRO-3 collectives call torch.distributed names that torch has renamed: one warning per call
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    try:
        base, settings = settings_from(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        with _mlflow_run(rank0, {"train": settings.model_dump(), "base": base, "data": args.data}):
            result = run_training(base, args.data, args.image_root, args.out, settings, resume=args.resume)
    except (RunConflict, DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank0:
        s = result.summary
        print(f"trained {s.get('global_step')} steps ({s.get('mode')}, world size {s.get('world_size')}); "
              f"loss {s.get('loss_first')} -> {s.get('loss_last')}; model: {result.model_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m mathllava.train", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))
