"""The learned image scorers: one small CNN with a clarity head (clear / unclear) and a complexity
head (levels 0..3), trained on the images that carry labels.

The paper fine-tunes two ViTs on 10K GPT-4V-labelled images; here a CNN built in code (a 4x4
patchify stem and four conv blocks, about 0.2M parameters, plus a small branch over layout cues:
blob and colour counts) learns both scores from the labelled share in about a minute on a CPU.
Each distinct image is decoded once into a small thumbnail. Agreement is measured on labelled
images held out of training, with the confusion matrix.
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
    epochs: int = Field(20, gt=0)
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


N_FEATURES = 12


def layout_features(thumb: np.ndarray) -> np.ndarray:
    """Counting cues the CNN learns slowly from a few thousand images: blobs that differ from the
    background (at three minimum sizes), blobs per frequent colour, distinct colours and edge density,
    each as log1p. Computed on the thumbnail, so the image is still decoded once."""
    from scipy import ndimage

    pixels = thumb.astype(np.int16)
    quant = (thumb // 64).reshape(-1, 3).astype(np.int16)
    codes = quant[:, 0] * 16 + quant[:, 1] * 4 + quant[:, 2]
    counts = np.bincount(codes, minlength=64)
    background = np.unravel_index(np.argmax(counts), (4, 4, 4))
    bg_colour = (np.array(background) * 64 + 32).astype(np.int16)
    mask = np.abs(pixels - bg_colour).sum(axis=2) > 60
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(0)
    share = counts / counts.sum()
    frequent = [c for c in np.argsort(-counts)[1:9] if share[c] > 0.003]
    code_img = codes.reshape(thumb.shape[:2])
    per_colour = [ndimage.label(code_img == c)[1] for c in frequent]
    gray = pixels.mean(axis=2)
    edges = (np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]) > 40
    feats = [n, (sizes >= 8).sum(), (sizes >= 40).sum(), (sizes >= 150).sum(), (share > 0.003).sum(),
             (share > 0.01).sum(), (share > 0.05).sum(), sum(per_colour), max(per_colour, default=0),
             len(frequent), 100 * edges.mean(), 100 * mask.mean()]
    return np.log1p(np.asarray(feats, dtype=np.float32))


def load_thumbnails(paths: Sequence[str], side: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(thumbnails N x side x side x 3 uint8, layout features N x N_FEATURES), one decode per image."""
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="thumbnails", unit="img")
    out = np.zeros((len(paths), side, side, 3), dtype=np.uint8)
    feats = np.zeros((len(paths), N_FEATURES), dtype=np.float32)
    for i, path in enumerate(iterator):
        out[i] = thumbnail(path, side)
        feats[i] = layout_features(out[i])
    return out, feats


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
            self.layout = nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(inplace=True))
            self.register_buffer("feature_mean", torch.zeros(N_FEATURES))
            self.register_buffer("feature_std", torch.ones(N_FEATURES))
            self.complexity = nn.Linear(256 + 64, levels)
            self.clarity = nn.Linear(256 + 64, 2)

        def forward(self, pixels, features):  # uint8 N x 3 x S x S, float N x N_FEATURES
            z = self.trunk(pixels.float() / 255.0 - 0.5)
            f = self.layout((features - self.feature_mean) / self.feature_std)
            z = torch.cat([z.mean((2, 3)), z.amax((2, 3)), f], 1)  # mean counts, max finds small marks
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


def fit(images: tuple[np.ndarray, np.ndarray], complexity: np.ndarray, clear: np.ndarray, cfg: ScorerSettings,
        progress: bool = False):
    """Train on the labelled thumbnails (complexity -1 / clear -1: that label is unknown) and measure
    agreement on the held-out share. Unclear images teach only the clarity head. Returns
    (model, report)."""
    import torch
    from torch import nn

    thumbs, feats = images
    torch.manual_seed(cfg.seed)
    train, test = split_holdout(len(thumbs), cfg.holdout, cfg.seed)
    x = torch.from_numpy(thumbs).permute(0, 3, 1, 2).contiguous()
    f = torch.from_numpy(feats)
    y_level = torch.from_numpy(complexity.astype(np.int64))
    y_clear = torch.from_numpy(clear.astype(np.int64))
    model = build_model(cfg.levels)
    model.feature_mean.copy_(f[train].mean(0))
    model.feature_std.copy_(f[train].std(0) + 1e-3)
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
            if len(idx) < 2:
                continue  # batch norm needs two images
            pixels = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror images keep their levels
            pixels = torch.where(flip[:, None, None, None], pixels.flip(3), pixels)
            level_logits, clear_logits = model(pixels, f[idx])
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
            total += float(loss.detach()) * len(idx)
        history.append(total / max(1, len(train)))
    levels, clear_p = predict(model, (thumbs[test], feats[test]))
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


def predict(model, images: tuple[np.ndarray, np.ndarray], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(complexity level, probability of clear) per thumbnail."""
    import torch

    thumbs, feats = images
    model.eval()
    levels, clear = [], []
    with torch.no_grad():
        for start in range(0, len(thumbs), batch_size):
            pixels = torch.from_numpy(thumbs[start:start + batch_size]).permute(0, 3, 1, 2).contiguous()
            features = torch.from_numpy(feats[start:start + batch_size])
            level_logits, clear_logits = model(pixels, features)
            mirrored = model(pixels.flip(3), features)  # trained with mirroring: average both views
            level_p = torch.softmax(level_logits, 1) + torch.softmax(mirrored[0], 1)
            clear_p = (torch.softmax(clear_logits, 1) + torch.softmax(mirrored[1], 1)) / 2
            levels.append(level_p.argmax(1).numpy())
            clear.append(clear_p[:, 1].numpy())
    if not levels:
        return np.zeros(0, dtype=int), np.zeros(0)
    return np.concatenate(levels), np.concatenate(clear)


def predict_paths(model, paths: Sequence[str], side: int, progress: bool = False,
                  chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """`predict` over image files, a chunk of thumbnails at a time (memory does not grow with the pool)."""
    levels, clear = [np.zeros(0, dtype=int)], [np.zeros(0)]
    starts = range(0, len(paths), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"score images ({len(paths)})", unit="chunk")
    for start in starts:
        a, b = predict(model, load_thumbnails(paths[start:start + chunk], side))
        levels.append(a)
        clear.append(b)
    return np.concatenate(levels), np.concatenate(clear)


class CachedScorer:
    """A trained scorer over a stream of rows: each distinct image is decoded and scored once."""

    def __init__(self, model, side: int):
        self.model, self.side = model, side
        self.cache: dict[str, tuple[int, float]] = {}

    def score(self, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        new = [p for p in dict.fromkeys(paths) if p not in self.cache]
        if new:
            levels, clear = predict(self.model, load_thumbnails(new, self.side))
            self.cache.update(zip(new, zip(levels.tolist(), clear.tolist())))
        pairs = [self.cache[p] for p in paths]
        return (np.array([a for a, _ in pairs], dtype=int), np.array([b for _, b in pairs], dtype=float))
