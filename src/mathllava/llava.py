"""Loading and saving llava-hf model directories (model, tokenizer, processor, chat template), on the
device a caller asks for. Training, evaluation and serving all load models through here."""

from __future__ import annotations

import os
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """`auto` is cuda when a GPU is visible, else cpu; asking for cuda without one is an error."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is visible (torch.cuda.is_available() is False)")
    return device


def default_dtype(device: str):
    """bf16 on GPUs that have it (the LLaVA-1.5 recipe), fp32 on CPU."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a llava-hf model directory (no config.json)")
    return path


def load_processor(model_dir: str | Path):
    from transformers import AutoProcessor

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoProcessor.from_pretrained(check_model_dir(model_dir))


def load(model_dir: str | Path, device: str = "cpu", dtype=None):
    """(model in eval mode on `device`, processor). `dtype` defaults to `default_dtype(device)`."""
    from transformers import LlavaForConditionalGeneration

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(device)
    model = LlavaForConditionalGeneration.from_pretrained(check_model_dir(model_dir),
                                                          dtype=dtype or default_dtype(device))
    model.to(device)
    model.eval()
    return model, load_processor(model_dir)


def save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def image_token_count(processor, pixel_values) -> int:
    """How many placeholder tokens one image of this pixel shape takes in the text."""
    return processor.replace_image_token({"pixel_values": pixel_values[None]}, 0).count(processor.image_token)
