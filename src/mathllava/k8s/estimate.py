"""GPU-hours of a training run, estimated before it is submitted: the run's token count over a
throughput measured on the same kind of GPU (scaled by model size when it was measured on another)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ClusterTrainConfig


@dataclass(frozen=True)
class Estimate:
    tokens_per_epoch: float
    epochs: float
    tokens_per_s_per_gpu: float
    gpus: int
    how: str

    @property
    def gpu_hours(self) -> float:
        return self.tokens_per_epoch * self.epochs / self.tokens_per_s_per_gpu / 3600

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus

    def lines(self) -> list[str]:
        return [f"estimate: {self.gpu_hours:,.1f} GPU-hours, {self.wall_hours:,.1f} h on {self.gpus} GPUs "
                f"(linear scaling assumed)",
                f"  {self.tokens_per_epoch:,.0f} tokens/epoch x {self.epochs:g} epochs at "
                f"{self.tokens_per_s_per_gpu:,.0f} tokens/s per GPU",
                f"  {self.how}"]


def count_tokens(data: str | Path, base: str | Path) -> tuple[int, int]:
    """(records, tokens) of a LLaVA conversation file as the base model's processor sees it: text
    tokens of every turn plus the image placeholders of each record's image."""
    import torch

    from ..llava import image_token_count, load_processor
    from ..train.data import read_conversations

    processor = load_processor(base)
    size = processor.image_processor.crop_size
    image_tokens = image_token_count(processor, torch.zeros(3, size["height"], size["width"]))
    records = tokens = 0
    for record in read_conversations(data):
        records += 1
        text = "\n".join(turn["value"].replace("<image>", "") for turn in record["conversations"])
        tokens += len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens += image_tokens if record.get("image") else 0
    return records, tokens


def estimate(config: ClusterTrainConfig) -> Estimate | None:
    """None when no measured throughput is configured, or the token count cannot be known."""
    e = config.estimate
    if e.measured is None:
        return None
    how = []
    records = e.samples
    if e.tokens is not None:
        tokens = e.tokens
        how.append("tokens from estimate.tokens")
    elif e.local_data and e.local_base:
        records, tokens = count_tokens(e.local_data, e.local_base)
        how.append(f"tokens counted in {e.local_data} ({records:,} records)")
    elif e.samples:
        per = e.tokens_per_sample or e.measured.tokens_per_sample
        tokens = e.samples * per
        how.append(f"{e.samples:,} samples x {per:g} tokens")
    else:
        return None
    rate = e.measured.samples_per_s * e.measured.tokens_per_sample / e.measured.gpus
    how.append(f"measured {e.measured.samples_per_s:g} samples/s x {e.measured.tokens_per_sample:g} tokens on "
               f"{e.measured.gpus} GPU(s)" + (f" ({e.measured.source})" if e.measured.source else ""))
    if e.model_parameters and e.measured.parameters and e.model_parameters != e.measured.parameters:
        rate *= e.measured.parameters / e.model_parameters
        how.append(f"scaled by parameters {e.measured.parameters:.3g} -> {e.model_parameters:.3g} "
                   "(training FLOPs ~ 6 x parameters x tokens)")
    gpus = config.job.nodes * max(config.job.gpus_per_node, 1)
    epochs = config.train.epochs
    if config.train.max_steps > 0 and records:
        samples = config.train.max_steps * config.train.batch_size * gpus * config.train.gradient_accumulation_steps
        tokens, epochs = samples * tokens / records, 1.0
        how.append(f"max_steps {config.train.max_steps}: {samples:,} samples")
    return Estimate(float(tokens), float(epochs), rate, gpus, "; ".join(how))
