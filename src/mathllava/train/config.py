"""Typed training and model settings, shared by `mathllava train`, the pipeline's train step and the
cluster launchers. Unknown keys and impossible values are refused with the key's path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..settings import Strict, parse, read_yaml
from .tiny import TinyModelConfig


class LoraSettings(Strict):
    """LoRA on the language model's linear layers (LLaVA-1.5's LoRA recipe: r 128, alpha 256)."""

    r: int = Field(128, gt=0)
    alpha: int = Field(256, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainSettings(Strict):
    """One fine-tuning run. Defaults are the paper's recipe (LLaVA-1.5 / Math-LLaVA full fine-tune)."""

    mode: Literal["full", "lora"] = "full"        # full: projector + LM; lora: LM adapters + full projector
    lora: LoraSettings = LoraSettings()
    epochs: float = Field(2.0, gt=0)
    max_steps: int = -1                            # > 0 stops after this many optimizer steps
    learning_rate: float = Field(2e-5, gt=0)
    projector_learning_rate: float | None = Field(None, gt=0)  # None: the same as learning_rate
    batch_size: int = Field(16, gt=0)              # per device
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: str = "cosine"
    max_grad_norm: float = Field(1.0, ge=0)
    max_length: int = Field(2048, gt=0)            # tokens, image placeholders included
    pad_to: Literal["longest", "max_length"] = "longest"  # max_length: every batch is max_length wide, so each
                                                   # step costs the same whatever the data (equal-compute runs)
    group_by_length: bool = False
    gradient_checkpointing: bool = False
    bf16: bool | Literal["auto"] = "auto"          # auto: on when the GPU supports it, off on CPU
    deepspeed: str | None = None                   # a DeepSpeed JSON config (configs/deepspeed/zero{2,3}.json)
    save_steps: int = Field(500, gt=0)             # checkpoint every N optimizer steps
    save_total_limit: int | None = 2               # checkpoints kept (at least 2, so one is always whole)
    logging_steps: int = Field(10, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dataloader_workers: int | Literal["auto"] = "auto"  # auto: 2 per GPU process, none on CPU
    encode_workers: int | None = None              # processes that encode the data once (None: by size)
    cache_dir: str | None = None                   # encoded-data cache (default: <out>/encoded)
    launcher: Literal["inprocess", "torchrun", "kubeflow"] = "inprocess"  # how the pipeline's train step runs it
                                                   # (kubeflow: a TrainJob/PyTorchJob, see parameters.cluster)
    nproc_per_node: int = Field(1, gt=0)           # processes (GPUs) for the torchrun launcher

    @field_validator("save_total_limit")
    @classmethod
    def _keep_two(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError("keep at least 2 checkpoints: a run killed while saving must find a whole one")
        return value

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"DeepSpeed config {value!r} not found (relative to {Path.cwd()})")
        return value

    @field_validator("dataloader_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return value


class ModelSettings(Strict):
    """`base`: a local llava-hf checkpoint directory (model, tokenizer, processor, chat template).
    Without one, the built-in tiny model of shape `tiny` is used."""

    base: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()

    @field_validator("base")
    @classmethod
    def _base_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        remote = bool(info.context and info.context.get("remote"))  # a path inside the cluster's pods
        if value is not None and not remote and "://" not in value and not (Path(value) / "config.json").is_file():
            raise ValueError(f"{value!r} is not a llava-hf checkpoint directory (no config.json)")
        return value






def load_sections(path: str | Path, remote: bool = False) -> tuple[ModelSettings, TrainSettings]:
    """`model` and `train` from a YAML file: a pipeline run config (under `parameters`) or a file
    with top-level `model` and `train` keys. `remote`: model paths are checked in the pods, not here."""
    data = read_yaml(path)
    section = data.get("parameters", data)
    return (parse(ModelSettings, section.get("model"), "model", str(path), remote),
            parse(TrainSettings, section.get("train"), "train", str(path)))
