"""Fine-tune a llava-hf base on LLaVA conversation data: the one training path.

`mathllava train`, `python -m mathllava.train` under torchrun (every worker of a cluster job) and
the pipeline's train step all call `run_training`. It follows the LLaVA-1.5 / Math-LLaVA recipe:
vision tower frozen, projector and LM trained (`mode: full`) or LoRA adapters on the LM plus the full
projector (`mode: lora`, merged at the end so the result is a plain llava-hf directory), loss on the
assistant turns only, transformers `Trainer` with DeepSpeed ZeRO-2/3 when configured.

Output folder:
    run.json            what this run is (base, data, settings); a resume must match it
    checkpoints/        checkpoint-N every `save_steps` (a COMPLETE marker once every rank wrote it)
    encoded/            the encoded data (unless `cache_dir` says elsewhere)
    adapter/            LoRA mode: the trained adapter and projector
    model/              the final llava-hf model (written aside, then renamed into place)
    summary.json        steps, losses, throughput, truncation counts

MLflow logging and every file write except DeepSpeed's own shards happen on rank 0 only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..faults import as_disk_full
from ..tracking import log_figure, log_metrics
from .config import TrainSettings
from .data import DataError, read_conversations
from .encoded import ensure_encoded, file_digest
from .trainer import COMPLETE, SAVING, barrier, callbacks, single_process_env, trainer_classes, training_args

IDENTITY_IGNORED = {"launcher", "nproc_per_node", "dataloader_workers", "encode_workers", "cache_dir", "device",
                    "logging_steps"}


class RunConflict(RuntimeError):
    """The output folder holds another run, or a run that --resume was not asked to continue."""


@dataclass
class TrainResult:
    model_dir: Path
    summary: dict
    history: list[dict] = field(default_factory=list)


def _identity(base: Path, data: Path, image_root: Path, settings: TrainSettings) -> dict:
    chosen = {k: v for k, v in settings.model_dump().items() if k not in IDENTITY_IGNORED}
    return {"base": str(base.resolve()), "data": str(data.resolve()), "data_sha256": file_digest(data)[:16],
            "image_root": str(image_root.resolve()), "settings": chosen}


def checkpoint_step(path: Path) -> int | None:
    """The step of a folder named `checkpoint-<step>` (as the Trainer names them); None for any other name."""
    tail = path.name.removeprefix("checkpoint-")
    return int(tail) if tail != path.name and tail.isdigit() else None


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Whole checkpoints, oldest first (by step)."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("checkpoint-*") if checkpoint_step(p) is not None and (p / COMPLETE).exists()]
    return sorted(found, key=checkpoint_step)


def remove_torn_checkpoints(ckpt_dir: Path) -> list[str]:
    """Delete checkpoint folders without the COMPLETE marker (a run killed while saving), and what a save
    left in the staging folder. Best effort: a folder that cannot be deleted stays (it is never resumed from)."""
    staging = ckpt_dir / SAVING
    removed = [f"{SAVING}/{p.name}" for p in staging.iterdir()] if staging.is_dir() else []
    shutil.rmtree(staging, ignore_errors=True)
    for path in ckpt_dir.glob("checkpoint-*"):   # none when the folder does not exist
        if path.is_dir() and not (path / COMPLETE).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return sorted(removed)


def check_output(out: Path, identity: dict, resume: bool) -> str | None:
    """Check the output folder against this run; returns the checkpoint to resume from (or None).
    Read-only, so every rank runs it before the process group forms and all fail alike."""
    marker = out / "run.json"
    if marker.exists():
        previous = json.loads(marker.read_text(encoding="utf-8"))  # pragma: no mutate (codec spelling; locales here are UTF-8)
        if not resume:
            raise RunConflict(f"{out} already holds a training run; pass --resume to continue it or use another --out")
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            if "settings" in changed:
                a, b = previous.get("settings", {}), identity["settings"]
                changed += [f"settings.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise RunConflict(f"{out} holds a run with other inputs or settings ({', '.join(changed)}); "
                              "use another --out")
    elif (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise RunConflict(f"{out}/checkpoints holds checkpoints of an unknown run; use another --out")
    whole = complete_checkpoints(out / "checkpoints")
    return str(whole[-1]) if (resume and whole) else None


def write_identity(out: Path, identity: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "run.json.tmp"  # pragma: no mutate (the staging name is read by nothing)
    text = json.dumps(identity, indent=2)
    tmp.write_text(text, encoding="utf-8")  # pragma: no mutate (codec spelling; locales here are UTF-8)
    tmp.replace(out / "run.json")

def _prepare_model(base: Path, settings: TrainSettings):
    """The base model, vision tower frozen; LoRA adapters on the LM (projector fully trained) in lora mode."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    for param in model.model.vision_tower.parameters():
        param.requires_grad = False
    if settings.mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = "|".join(settings.lora.target_modules)
        model = get_peft_model(model, LoraConfig(
            r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout,
            target_modules=rf".*language_model.*\.({targets})", modules_to_save=["multi_modal_projector"],
            task_type="CAUSAL_LM"))
    model.config.use_cache = False
    return model


def _pad_id(tokenizer) -> int:
    """Padding is masked out of attention and loss, so any id will do where a base defines none."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() if not hasattr(p, "ds_numel") else p.ds_numel for p in model.parameters()
                    if p.requires_grad)
    total = sum(p.numel() if not hasattr(p, "ds_numel") else p.ds_numel for p in model.parameters())
    return trainable, total


def _merge_lora(base: Path, adapter: Path, target: Path) -> None:
    """Base + adapter merged in fp32 on this process alone, saved in the base's own dtype. ZeRO-3 is
    switched off first: with its config alive, from_pretrained would build empty partitioned
    weights and wait for the other ranks."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, LlavaForConditionalGeneration
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # training is over; nothing after this is partitioned
    saved_dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None) or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(saved_dtype).save_pretrained(target)


def run_training(base: str | Path, data: str | Path, image_root: str | Path, out: str | Path,
                 settings: TrainSettings, resume: bool = False, on_log: Callable | None = None) -> TrainResult:
    """Train, checkpoint, and write the final llava-hf model to `<out>/model` (see the module doc)."""
    import torch
    from transformers import set_seed

    from ..llava import check_model_dir, load_processor, resolve_device

    base, data, image_root, out = Path(base), Path(data), Path(image_root), Path(out)
    check_model_dir(base)
    if not data.is_file():
        raise DataError(f"{data}: no such training file")
    identity = _identity(base, data, image_root, settings)
    resume_from = check_output(out, identity, resume)
    summary_path = out / "summary.json"
    if resume and (out / "model" / "config.json").is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        print(f"{out}: this run already finished at step {summary.get('global_step')}; nothing to resume")
        return TrainResult(out / "model", summary, summary.get("history", []))
    device = resolve_device(settings.device)
    bf16 = (device == "cuda" and torch.cuda.is_bf16_supported()) if settings.bf16 == "auto" else settings.bf16
    workers = settings.dataloader_workers
    if workers == "auto":
        workers = 2 if device == "cuda" else 0
    if settings.deepspeed:
        single_process_env()
    args = training_args(out, settings, device, bf16, workers)  # forms the process group, if any
    if settings.deepspeed and device == "cpu":
        import deepspeed  # on CPU, accelerate forms a gloo group but leaves DeepSpeed's own comm unset

        deepspeed.init_distributed(dist_backend="gloo")
    barrier()  # every rank has checked the folder before rank 0 writes to it (NCCL groups form lazily)
    if args.process_index == 0:
        write_identity(out, identity)
        removed = remove_torn_checkpoints(out / "checkpoints")
        if removed:
            print(f"removed incomplete checkpoints (a run killed while saving): {', '.join(removed)}")

    records = read_conversations(data)
    processor = load_processor(base)
    cache_root = Path(settings.cache_dir) if settings.cache_dir else out / "encoded"
    with args.main_process_first(local=True, desc="encode the training data"):
        encoded = ensure_encoded(data, records, image_root, base, settings.max_length, cache_root,
                                 settings.encode_workers, progress=args.process_index == 0)
    meta = encoded.meta
    if args.process_index == 0:
        print(f"training data: {meta['records']} records -> {meta['samples']} samples, {meta['images']} images, "
              f"{meta['truncated']} truncated at a turn boundary, {meta['dropped']} dropped "
              f"(first answer beyond max_length {settings.max_length})")

    set_seed(settings.seed)
    model = _prepare_model(base, settings)
    trainable, total = _trainable(model)
    LlavaTrainer, Collator = trainer_classes()
    hooks, timer = callbacks(on_log, device)
    trainer = LlavaTrainer(
        model=model, args=args, train_dataset=encoded, processing_class=processor,
        data_collator=Collator(_pad_id(processor.tokenizer), 8 if device == "cuda" else None,
                               settings.max_length if settings.pad_to == "max_length" else None),
        callbacks=hooks, normalizer=meta["normalizer"], lengths=encoded.lengths,
        projector_lr=settings.projector_learning_rate)
    if args.process_index == 0:
        log_metrics({"trainable_parameters": trainable, "total_parameters": total, "samples": meta["samples"],
                     "truncated": meta["truncated"], "dropped": meta["dropped"],
                     "world_size": args.world_size}, section="train")
        if resume_from:
            print(f"resuming from {resume_from}")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started

    final = out / "model"
    staging = out / "model.saving"
    if args.process_index == 0:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        if settings.mode == "lora":
            trainer.save_model(str(out / "adapter"))  # collective under ZeRO-3; written by rank 0
        else:
            trainer.save_model(str(staging))
        if args.process_index == 0:
            if settings.mode == "lora":
                _merge_lora(base, out / "adapter", staging)
            processor.save_pretrained(staging)
    except Exception as err:  # noqa: BLE001 (tokenizers raises a bare Exception on a full disk)
        shutil.rmtree(staging, ignore_errors=True)
        full = as_disk_full(err, staging)
        if full is not None:
            raise full from err
        raise
    history = [dict(h) for h in trainer.state.log_history]
    summary = {}
    if args.process_index == 0:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        rate = timer.rate()
        samples_per_step = settings.batch_size * settings.gradient_accumulation_steps * args.world_size
        mean_tokens = float(encoded.lengths.mean())
        losses = [h["loss"] for h in history if "loss" in h]
        summary = {
            "global_step": trainer.state.global_step, "epochs": trainer.state.epoch, "mode": settings.mode,
            "world_size": args.world_size, "device": device, "bf16": bf16, "deepspeed": settings.deepspeed,
            "train_loss": output.training_loss, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "resumed_from": resume_from,
            "runtime_s": runtime, "trainable_parameters": trainable, "total_parameters": total,
            "steady_steps_per_s": rate,
            "steady_samples_per_s": rate * samples_per_step if rate else None,
            "steady_tokens_per_s": rate * samples_per_step * mean_tokens if rate else None,
            "samples": meta["samples"], "records": meta["records"], "truncated": meta["truncated"],
            "dropped": meta["dropped"], "dropped_ids": meta["dropped_ids"], "mean_tokens": mean_tokens,
            "history": history,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        log_metrics({k: summary[k] for k in ("steady_samples_per_s", "steady_tokens_per_s", "runtime_s")
                     if summary[k] is not None}, section="train")
        if losses:
            from ..plots import loss_curve

            log_figure(loss_curve(history), "training/loss_curve.png")
    barrier()
    return TrainResult(final, summary, history)
