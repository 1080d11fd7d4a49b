from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, step
from zenml.enums import ArtifactType

from mathllava import plots
from mathllava.evaluation.runner import problem_from_row
from mathllava.formats import target_text
from mathllava.modeling import (ConversationDataset, TinyModelConfig, TrainConfig, build_model, build_processor,
                                freeze_vision_tower, save, train, train_tokenizer)
from mathllava.tracking import log_figure, log_metrics, log_params

from ._state import state_dir


@step
def train_model(curated_dataset: pd.DataFrame, model_cfg: dict, train_cfg: dict) -> Tuple[
    Annotated[Path, ArtifactConfig(name="model_dir", artifact_type=ArtifactType.MODEL)],
    Annotated[list, "train_history"],
]:
    """Fine-tune a tiny LLaVA (vision tower frozen, loss on answer tokens) with the HF Trainer."""
    import torch

    torch.manual_seed(train_cfg.get("seed", 0))
    problems = [problem_from_row(r) for r in curated_dataset.to_dict("records")]
    queries = [p["query"] for p in problems]
    targets = [target_text(p["answer"], p["question_type"], p["choices"]) for p in problems]
    mcfg = TinyModelConfig(**model_cfg)
    tokenizer = train_tokenizer(queries + targets, mcfg.vocab_size)
    processor = build_processor(tokenizer, mcfg)
    model = build_model(tokenizer, mcfg)
    trainable = freeze_vision_tower(model)
    log_params({"model": model_cfg, "train": train_cfg})
    log_metrics({"trainable_parameters": trainable,
                 "total_parameters": sum(p.numel() for p in model.parameters()), "train_rows": len(problems)})
    dataset = ConversationDataset(processor, queries, targets, curated_dataset["image_path"].tolist())
    work = state_dir() / "training"

    def on_log(step_no: int, logs: dict) -> None:
        log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))}, prefix="train_", step=step_no)

    history = train(model, processor, dataset, TrainConfig(**train_cfg), work, on_log=on_log)
    history = [{**h} for h in history]
    log_figure(plots.loss_curve(history), "training/loss_curve.png")
    out = save(model, processor, work / "model")
    return out, history
