"""The learned image scorers: one small CNN with a clarity head (clear / unclear) and a complexity
head (levels 0..3), trained on the images that carry labels.

The paper fine-tunes two ViTs on 10K human-labelled images; here a CNN built in code (a 4x4
patchify stem and four conv blocks, about 0.2M parameters) learns both scores from the labelled share
in a minute on a CPU. Each distinct image is decoded once into a small thumbnail. Agreement is
measured on labelled images held out of training, with the confusion matrix.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
from pydantic import Field

from ..settings import Strict


class ScorerSettings(Strict):
    """The learned clarity and complexity scorer (`select.scorer`)."""

    enabled: bool = True            # false: the image-statistics rules only
    side: int = Field(128, ge=32, le=512)       # thumbnail side the CNN sees
    epochs: int = Field(16, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(4e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    holdout: float = Field(0.2, gt=0, lt=1)     # labelled images kept out of training to measure agreement
    min_labelled: int = Field(200, gt=0)        # fewer labelled images: the rules are the fallback
    levels: int = Field(4, ge=2)
    seed: int = 0


def thumbnail(path: str, side: int) -> np.ndarray:
    """An image as side x side x 3 uint8 (one decode; draft mode lets JPEG decode at a lower scale)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        return np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.uint8)


def load_thumbnails(paths: Sequence[str], side: int, progress: bool = False) -> np.ndarray:
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="thumbnails", unit="img")
    out = np.zeros((len(paths), side, side, 3), dtype=np.uint8)
    for i, path in enumerate(iterator):
        out[i] = thumbnail(path, side)
    return out


def build_model(levels: int = 4):
    import torch
    from torch import nn

    def block(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> list:
        return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class ImageScorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(*block(3, 32, 4, 4, 0), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                                       nn.MaxPool2d(2), *block(64, 96), nn.MaxPool2d(2), *block(96, 128))
            self.complexity = nn.Linear(256, levels)
            self.clarity = nn.Linear(256, 2)

        def forward(self, pixels):  # uint8 N x 3 x S x S
            z = self.trunk(pixels.float() / 255.0 - 0.5)
            z = torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1)  # mean counts, max finds small marks
            return self.complexity(z), self.clarity(z)

    return ImageScorer()


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, int(round(n * holdout)))
    return np.array(sorted(order[k:]), dtype=int), np.array(sorted(order[:k]), dtype=int)


def confusion(truth: np.ndarray, predicted: np.ndarray, levels: int) -> list[list[int]]:
    """rows: labelled level, columns: predicted level."""
    matrix = np.zeros((levels, levels), dtype=int)
    np.add.at(matrix, (truth.astype(int), predicted.astype(int)), 1)
    return matrix.tolist()


def agreement(truth: np.ndarray, predicted: np.ndarray, levels: int) -> dict:
    if len(truth) == 0:
        return {"n": 0}
    return {"n": int(len(truth)), "exact": float((truth == predicted).mean()),
            "within_one": float((np.abs(truth - predicted) <= 1).mean()),
            "confusion": confusion(truth, predicted, levels)}


def fit(thumbs: np.ndarray, complexity: np.ndarray, clear: np.ndarray, cfg: ScorerSettings,
        progress: bool = False):
    """Train on the labelled thumbnails (complexity -1 / clear -1: that label is unknown) and measure
    agreement on the held-out share. Unclear images teach only the clarity head. Returns
    (model, report)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    train, test = split_holdout(len(thumbs), cfg.holdout, cfg.seed)
    x = torch.from_numpy(thumbs).permute(0, 3, 1, 2).contiguous()
    y_level = torch.from_numpy(complexity.astype(np.int64))
    y_clear = torch.from_numpy(clear.astype(np.int64))
    model = build_model(cfg.levels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.learning_rate, total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_t = torch.from_numpy(train)
    epochs = range(cfg.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="train scorer", unit="epoch")
    history = []
    for _ in epochs:
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            pixels = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror images keep their levels
            pixels = torch.where(flip[:, None, None, None], pixels.flip(3), pixels)
            level_logits, clear_logits = model(pixels)
            loss = torch.zeros(())
            known_clear = y_clear[idx] >= 0
            if known_clear.any():
                loss = loss + nn.functional.cross_entropy(clear_logits[known_clear], y_clear[idx][known_clear])
            known_level = (y_level[idx] >= 0) & (y_clear[idx] != 0)  # a degraded image's level is not learned
            if known_level.any():
                loss = loss + nn.functional.cross_entropy(level_logits[known_level], y_level[idx][known_level],
                                                          label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        history.append(total / max(1, len(train)))
    levels, clear_p = predict(model, thumbs[test])
    truth_level, truth_clear = complexity[test], clear[test]
    level_known = (truth_level >= 0) & (truth_clear != 0)
    clear_known = truth_clear >= 0
    predicted_clear = (clear_p >= 0.5).astype(int)
    report = {
        "method": "learned", "labelled": int(len(thumbs)), "trained_on": int(len(train)), "heldout": int(len(test)),
        "loss_by_epoch": history,
        "complexity": agreement(truth_level[level_known], levels[level_known], cfg.levels),
        "clarity": {"n": int(clear_known.sum()),
                    "accuracy": float((predicted_clear[clear_known] == truth_clear[clear_known]).mean())
                    if clear_known.any() else None,
                    "unclear_recall": float((predicted_clear[truth_clear == 0] == 0).mean())
                    if (truth_clear == 0).any() else None},
    }
    return model, report


def predict(model, thumbs: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(complexity level, probability of clear) per thumbnail."""
    import torch

    model.eval()
    levels, clear = [], []
    with torch.no_grad():
        for start in range(0, len(thumbs), batch_size):
            pixels = torch.from_numpy(thumbs[start:start + batch_size]).permute(0, 3, 1, 2).contiguous()
            level_logits, clear_logits = model(pixels)
            levels.append(level_logits.argmax(1).numpy())
            clear.append(torch.softmax(clear_logits, 1)[:, 1].numpy())
    if not levels:
        return np.zeros(0, dtype=int), np.zeros(0)
    return np.concatenate(levels), np.concatenate(clear)
