"""Rule-based image clarity and complexity from image statistics (sharpness, noise, JPEG blocking,
resolution; edge density, colours, blobs): the fallback when no labelled images train the learned
scorer (`scorer`), and the resolution check the learned clarity head cannot see after resizing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from ..settings import Strict

ANALYSIS_SIDE = 128


class ClarityRules(Strict):
    """`select.clarity`: limits an image must keep to count as clear."""

    min_side: int = Field(64, gt=0)
    max_noise_sigma: float = Field(12.0, gt=0)
    min_sharpness: float = Field(0.25, ge=0)
    max_blockiness: float = Field(1.6, gt=0)


class ComplexityRules(Strict):
    """`select.complexity`: the rule-based level (the fallback without labels)."""

    cuts: tuple[float, ...] = (0.9, 1.6, 2.4)   # cut points on the score, one per level above 0
    edge_weight: float = 20.0
    colour_weight: float = 0.25
    component_weight: float = 0.08

    @field_validator("cuts")
    @classmethod
    def _increasing(cls, cuts: tuple[float, ...]) -> tuple[float, ...]:
        if list(cuts) != sorted(cuts):
            raise ValueError(f"cut points must increase, got {list(cuts)}")
        return cuts


@dataclass
class ImageStats:
    min_side: int
    noise_sigma: float
    sharpness: float
    blockiness: float
    edge_density: float
    colours: int
    components: int
    ink: float = 0.0


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate: a Laplacian-difference mask that cancels image structure."""
    if min(gray.shape) < 3:
        return 0.0
    k = gray[:-2, :-2] - 2 * gray[:-2, 1:-1] + gray[:-2, 2:] - 2 * gray[1:-1, :-2] + 4 * gray[1:-1, 1:-1] \
        - 2 * gray[1:-1, 2:] + gray[2:, :-2] - 2 * gray[2:, 1:-1] + gray[2:, 2:]
    # median keeps the clean edges of rendered figures from reading as noise
    return float(np.median(np.abs(k)) * np.sqrt(np.pi / 2) / 6 * 1.4826 * 2)


def sharpness(gray: np.ndarray, rank: int = 50) -> float:
    """How steep the strongest edges are, 0..1: crisp edges jump most of the way in one pixel.
    The rank-th largest step (not the maximum) ignores a few stray pixels."""
    steps = np.concatenate([np.abs(np.diff(gray, axis=1)).ravel(), np.abs(np.diff(gray, axis=0)).ravel()])
    if steps.size == 0:
        return 0.0
    k = min(rank, steps.size)
    return float(np.partition(steps, -k)[-k] / 255.0)


def blockiness(gray: np.ndarray) -> float:
    """JPEG blocking: how much more often small steps (1..24 grey levels) fall on 8-pixel block
    borders than inside blocks, over both axes; about 1 for unblocked images."""
    ratios = []
    for steps in (np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=0)).T):
        if steps.shape[1] < 16:
            return 1.0
        small = (steps > 0) & (steps <= 24)
        cols = np.arange(steps.shape[1])
        border, inner = small[:, cols % 8 == 7].mean(), small[:, cols % 8 != 7].mean()
        ratios.append((border + 0.002) / (inner + 0.002))
    return float(np.mean(ratios))


def image_stats(path: str) -> ImageStats:
    with Image.open(path) as img:
        img = img.convert("RGB")
        side = min(img.size)
        gray_full = _gray(img)
        blocks = blockiness(gray_full)
        small = img.resize((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.BILINEAR)
    gray = _gray(small)
    sigma = noise_sigma(gray_full)
    grad = np.hypot(np.diff(gray, axis=1)[:-1, :], np.diff(gray, axis=0)[:, :-1])
    edges = grad > 40
    ink = float((np.abs(gray - np.median(gray)) > 30).mean())
    quant = (np.asarray(small) // 32).reshape(-1, 3)
    codes, counts = np.unique(quant[:, 0] * 64 + quant[:, 1] * 8 + quant[:, 2], return_counts=True)
    colours = int((counts > 0.004 * quant.shape[0]).sum())
    return ImageStats(side, sigma, sharpness(gray_full), blocks, float(edges.mean()), colours,
                      _count_components(gray), ink)


def _count_components(gray: np.ndarray) -> int:
    """Connected blobs that differ from the background colour (4-connectivity, small ones ignored)."""
    background = np.median(gray)
    mask = np.abs(gray - background) > 30
    seen = np.zeros_like(mask)
    h, w = mask.shape
    count = 0
    for y in range(0, h, 2):
        for x in range(0, w, 2):
            if mask[y, x] and not seen[y, x]:
                stack, size = [(y, x)], 0
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    size += 1
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                count += size >= 12
    return count


def defects(stats: ImageStats, rules: ClarityRules) -> list[str]:
    """Which clarity limits an image breaks (empty when it is clear)."""
    found = []
    if stats.min_side < rules.min_side:
        found.append("low resolution")
    if stats.noise_sigma > rules.max_noise_sigma:
        found.append("noise")
    if stats.sharpness < rules.min_sharpness:
        found.append("blur")
    if stats.blockiness > rules.max_blockiness:
        found.append("compression blocking")
    return found


def clarity_score(stats: ImageStats, rules: ClarityRules) -> float:
    """0..1, the product of per-defect margins (1 when every statistic is inside its limit)."""
    res = min(1.0, stats.min_side / rules.min_side)
    noise = min(1.0, rules.max_noise_sigma / max(stats.noise_sigma, 1e-6))
    sharp = min(1.0, stats.sharpness / rules.min_sharpness)
    block = min(1.0, rules.max_blockiness / max(stats.blockiness, 1e-6))
    return float(res * noise * sharp * block)


def complexity_score(stats: ImageStats, rules: ComplexityRules) -> float:
    return (rules.edge_weight * stats.edge_density + rules.colour_weight * stats.colours
            + rules.component_weight * stats.components)


def complexity_level(score: float, rules: ComplexityRules) -> int:
    return int(sum(score > c for c in rules.cuts))
