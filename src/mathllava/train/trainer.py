"""The transformers Trainer as this project runs it: the Trainer subclass and collator, the callbacks
(MLflow relay on rank 0, checkpoint COMPLETE markers, steady-state timing), the TrainingArguments
built from `TrainSettings`, and the process-group helpers."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..faults import as_disk_full
from ..tracking import log_metrics
from .config import TrainSettings
from .data import normalize_pixels
from .progress import StatusPoster, reporter

COMPLETE = "COMPLETE"
SAVING = ".saving"  # checkpoints are written here, then renamed into place


def trainer_classes():
    """(LlavaTrainer, Collator), defined on first use so that importing this module stays light."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class SeededLengthGroupedSampler(LengthGroupedSampler):
        """Length-grouped order drawn from seed + epoch, so that a resumed run skips exactly the batches
        the interrupted one had trained on (the stock sampler draws from the global random state)."""

        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class LlavaTrainer(Trainer):
        """The Trainer with three additions: pixels are normalised on the device (the collator sends
        the stored 8-bit images), the projector can have its own learning rate, and length grouping
        uses the lengths known from encoding instead of reading every sample."""

        def __init__(self, *args, normalizer: dict, lengths=None, projector_lr: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.normalizer, self.lengths, self.projector_lr = normalizer, lengths, projector_lr

        def _get_output_dir(self, trial):
            staging = getattr(self, "_staging", None)
            return str(staging) if staging is not None else super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            """Each rank writes its part of `checkpoint-N` into `<output_dir>/.saving/`; once all have, rank
            0 renames the folder into place. A save that fails part-way leaves no `checkpoint-N` behind,
            and a full disk is told as one error naming the folder and the space left."""
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

            real = Path(super()._get_output_dir(trial))
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self._staging = real / SAVING
            if self.args.should_save:
                shutil.rmtree(self._staging / name, ignore_errors=True)
            barrier()  # no rank writes its part before rank 0 has cleared the staging folder
            try:
                super()._save_checkpoint(model, trial)
            except Exception as err:  # noqa: BLE001 (tokenizers raises a bare Exception on a full disk)
                shutil.rmtree(self._staging / name, ignore_errors=True)
                full = as_disk_full(err, self._staging / name)
                if full is not None:
                    raise full from err
                raise
            finally:
                self._staging = None
            barrier()
            if self.args.should_save:
                shutil.rmtree(real / name, ignore_errors=True)
                os.replace(real / SAVING / name, real / name)
                try:
                    (real / SAVING).rmdir()
                except OSError:
                    pass
                rotate_checkpoints(output_dir=str(real), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
            barrier()

        def _prepare_inputs(self, inputs):
            inputs = super()._prepare_inputs(inputs)
            raw = inputs.pop("raw_pixels", None)
            if raw is not None:
                inputs["pixel_values"] = normalize_pixels(raw, self.normalizer, self.model.dtype)
            return inputs

        def floating_point_ops(self, inputs) -> int:
            """The Trainer's FLOP count for its logs (6 x parameters x tokens), with the parameter count
            taken once: the stock method walks every parameter on every step."""
            if not hasattr(self, "_flop_params"):  # ZeRO-3 leaves empty shards: count ds_numel there
                self._flop_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())
            return 6 * self._flop_params * int(inputs["input_ids"].numel())

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            """transformers saves LLaVA weights under the llava-hf key names but loads a checkpoint's
            raw state dict with strict=False, so a resumed full fine-tune silently restarted from the
            base weights. Load through from_pretrained (which maps the names), strictly."""
            from transformers import LlavaForConditionalGeneration

            model = self.model if model is None else model
            if self.is_deepspeed_enabled or not isinstance(model, LlavaForConditionalGeneration):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)  # DeepSpeed / PEFT: their own
            saved = LlavaForConditionalGeneration.from_pretrained(resume_from_checkpoint, dtype=model.dtype)
            model.load_state_dict(saved.state_dict(), strict=True)

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy == "group_by_length" and self.lengths is not None:
                return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                                  [int(n) for n in self.lengths], self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def create_optimizer(self, model=None):
            if self.projector_lr is None or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault(("multi_modal_projector" in name, name in decay), []).append(param)
            param_groups = [{"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
                             **({"lr": self.projector_lr} if projector else {})}
                            for (projector, decayed), params in groups.items()]
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(param_groups, **kwargs)
            return self.optimizer

    class Collator:
        """Right-padded token batches (labels IGNORE_INDEX on padding) and the raw stored images."""

        def __init__(self, pad_id: int, multiple_of: int | None, width: int | None = None):
            self.pad_id, self.multiple_of, self.width = pad_id, multiple_of, width

        def __call__(self, batch: list[dict]) -> dict:
            from ..conversation import IGNORE_INDEX

            width = max(len(b["input_ids"]) for b in batch)
            if self.width:   # a fixed width (records never exceed max_length: encoding cuts them)
                width = max(width, self.width)
            elif self.multiple_of:
                width = -(-width // self.multiple_of) * self.multiple_of
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, b in enumerate(batch):
                n = len(b["input_ids"])
                ids[i, :n] = torch.from_numpy(b["input_ids"].astype("int64"))
                labels[i, :n] = torch.from_numpy(b["labels"].astype("int64"))
                mask[i, :n] = 1
            out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
            images = [b["pixels"] for b in batch if b["pixels"] is not None]
            if images:
                import numpy as np

                out["raw_pixels"] = torch.from_numpy(np.stack(images))
            return out

    return LlavaTrainer, Collator


def callbacks(on_log: Callable | None, device: str):
    from transformers import TrainerCallback

    class Relay(TrainerCallback):
        """Step metrics to MLflow (rank 0: the tracking helpers log only in an active run, and only
        rank 0 has one) and to the caller."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                log_metrics(numbers, section="train", step=state.global_step)
                if on_log:
                    on_log(state.global_step, numbers)

    class MarkComplete(TrainerCallback):
        """After every rank has written its part of a checkpoint, rank 0 marks it whole."""

        def on_save(self, args, state, control, **kwargs):
            barrier()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    (folder / COMPLETE).write_text(f"{state.global_step}\n", encoding="utf-8")

    class StepTimer(TrainerCallback):
        """Wall time of the steady part of the run (the first fifth, or the first step, is warm-up)."""

        def __init__(self):
            self.first_step, self.start, self.end, self.steps = None, None, None, 0

        def _now(self) -> float:
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            warmup = max(1, state.max_steps // 5)
            if self.first_step is None and state.global_step >= warmup:
                self.first_step, self.start = state.global_step, self._now()
            elif self.first_step is not None and state.global_step == state.max_steps:
                self.end, self.steps = self._now(), state.global_step - self.first_step

        def rate(self) -> float | None:
            return self.steps / (self.end - self.start) if self.steps and self.end > self.start else None

    timer = StepTimer()
    hooks = [Relay(), MarkComplete(), timer]
    poster = StatusPoster.from_env()
    if poster is not None:   # inside a Kubeflow Trainer v2.2+ TrainJob with progress reporting on
        hooks.append(reporter(poster))
    return hooks, timer


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def single_process_env() -> None:
    """DeepSpeed needs a process group even for one process: outside torchrun, make it a group of one."""
    import os
    import socket

    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def training_args(out: Path, settings: TrainSettings, device: str, bf16: bool, workers: int):
    import dataclasses

    from transformers import TrainingArguments

    # transformers 5 renamed gradient_checkpointing (the old name warns); older images know only the old one
    ckpt = "activation_checkpointing" if any(f.name == "activation_checkpointing"
                                             for f in dataclasses.fields(TrainingArguments)) else "gradient_checkpointing"
    checkpointing = {ckpt: settings.gradient_checkpointing,
                     f"{ckpt}_kwargs": {"use_reentrant": False} if settings.gradient_checkpointing else None}
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay, lr_scheduler_type=settings.lr_scheduler,
        max_grad_norm=settings.max_grad_norm, logging_steps=settings.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        report_to=[], seed=settings.seed, use_cpu=device == "cpu", bf16=bf16, deepspeed=settings.deepspeed,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        **checkpointing,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        dataloader_num_workers=workers, dataloader_pin_memory=device == "cuda",
        dataloader_persistent_workers=workers > 0, remove_unused_columns=False, disable_tqdm=False,
        save_only_model=False, ddp_find_unused_parameters=False, tf32=True if device == "cuda" else None,
    )
    # transformers adds its own Kubeflow progress callback when the status server's variables are set;
    # this project's (.progress) posts instead, so that each update is sent once
    args.report_to = [r for r in args.report_to if r != "kubeflow"]
    return args
