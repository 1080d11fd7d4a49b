"""Image clarity and comprehension-complexity scores, and complexity-stratified sampling.

The paper scores images with two fine-tuned ViT classifiers; here both scores come from simple
image statistics (sharpness, noise, JPEG blocking, resolution; edge density and colour count),
with thresholds from config. The sampler follows the paper's rule: a set ratio per complexity
level (default 0:1:2:3 = 2:3:4:1), every level-3 image kept, samples spread evenly over sources.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

ANALYSIS_SIDE = 128


@dataclass
class ClarityRules:
    min_side: int = 64
    max_noise_sigma: float = 12.0
    min_sharpness: float = 0.25
    max_blockiness: float = 1.6


@dataclass
class ComplexityRules:
    # cut points on the complexity score for levels 1, 2 and 3
    cuts: tuple[float, float, float] = (0.9, 1.6, 2.4)
    edge_weight: float = 20.0
    colour_weight: float = 0.25
    component_weight: float = 0.08


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


FEATURES = ("edge_density", "colour_count", "components", "log_components", "sharpness", "ink")


def complexity_score(stats: ImageStats, rules: ComplexityRules) -> float:
    return (rules.edge_weight * stats.edge_density + rules.colour_weight * stats.colours
            + rules.component_weight * stats.components)


def complexity_level(score: float, rules: ComplexityRules) -> int:
    return int(sum(score > c for c in rules.cuts))


@dataclass
class ComplexityModel:
    """Softmax regression from image statistics to complexity level 0..3: our stand-in for the
    paper's ViT classifier trained on a labelled subset (there GPT-4V labels, here the labels the
    data source carries)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (features + 1, levels)

    @staticmethod
    def features(frame: pd.DataFrame) -> np.ndarray:
        """Raw statistics plus the same statistics standardised within each source: a chart with
        many bars is complex for a chart even when a busy photo would have more edges."""
        cols = frame.assign(log_components=np.log1p(frame["components"]))[list(FEATURES)].astype(float)
        grouped = cols.groupby(frame["source"])
        within = (cols - grouped.transform("mean")) / (grouped.transform("std").fillna(0) + 1e-6)
        return np.hstack([cols.to_numpy(), within.to_numpy()])

    @classmethod
    def fit(cls, frame: pd.DataFrame, labels: np.ndarray, levels: int = 4, steps: int = 800,
            lr: float = 0.5, l2: float = 1e-3) -> "ComplexityModel":
        x = cls.features(frame)
        mean, std = x.mean(0), x.std(0) + 1e-9
        xb = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        y = np.eye(levels)[labels.astype(int)]
        # balanced class weights: rare levels (3 above all) must not collapse into the majority
        counts = y.sum(0)
        row_weight = (y @ np.where(counts > 0, len(y) / (levels * np.maximum(counts, 1)), 0.0))[:, None]
        w = np.zeros((xb.shape[1], levels))
        for _ in range(steps):
            logits = xb @ w
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            w -= lr * (xb.T @ (row_weight * (p - y)) / len(xb) + l2 * w)
        return cls(mean, std, w)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        xb = np.hstack([(self.features(frame) - self.mean) / self.std, np.ones((len(frame), 1))])
        return (xb @ self.weights).argmax(1)


def score_images(manifest: pd.DataFrame, clarity: ClarityRules, complexity: ComplexityRules,
                 progress: bool = False) -> pd.DataFrame:
    """The manifest with image statistics, clarity (score, defects, clear) and a rule-based
    complexity level; each distinct image is analysed once."""
    paths = manifest["image_path"].drop_duplicates().tolist()
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="score images", unit="img")
    rows = {}
    for path in iterator:
        st = image_stats(path)
        cs = complexity_score(st, complexity)
        found = defects(st, clarity)
        rows[path] = {"clarity_score": clarity_score(st, clarity), "defects": ", ".join(found), "clear": not found,
                      "complexity_score": cs, "complexity": complexity_level(cs, complexity),
                      "noise_sigma": st.noise_sigma, "sharpness": st.sharpness, "blockiness": st.blockiness,
                      "edge_density": st.edge_density, "colour_count": st.colours, "components": st.components, "ink": st.ink}
    scores = pd.DataFrame.from_dict(rows, orient="index")
    return manifest.join(scores, on="image_path")


def assign_complexity(scored: pd.DataFrame, min_labelled: int = 40, holdout: float = 0.2,
                      seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Replace the rule-based level with a fitted classifier where enough clear rows carry a
    complexity label; report its agreement with held-out labels."""
    labelled = scored[scored["clear"] & scored["complexity_label"].notna()]
    report: dict = {"method": "rules", "labelled": int(len(labelled))}
    if len(labelled) < min_labelled:
        return scored, report
    order = labelled.sample(frac=1.0, random_state=seed).index
    n_test = max(1, int(len(order) * holdout))
    test, train = order[:n_test], order[n_test:]
    labels = scored.loc[train, "complexity_label"].to_numpy()
    model = ComplexityModel.fit(scored.loc[train], labels)
    # within-source statistics need the whole source, so predict on all rows and pick the test ones
    everything = model.predict(scored)
    predicted = pd.Series(everything, index=scored.index).loc[test].to_numpy()
    truth = scored.loc[test, "complexity_label"].to_numpy().astype(int)
    out = scored.copy()
    out["complexity"] = everything
    report.update(method="fitted", heldout=int(n_test),
                  heldout_accuracy=float((predicted == truth).mean()),
                  heldout_within_one=float((np.abs(predicted - truth) <= 1).mean()))
    return out, report


# --------------------------------------------------------------------------- sampling


@dataclass
class SamplingPlan:
    target_size: int
    proportions: tuple[float, ...] = (2, 3, 4, 1)
    keep_all_top_level: bool = True
    seed: int = 0
    targets: dict = field(default_factory=dict)


def level_targets(available: dict[int, int], plan: SamplingPlan) -> dict[int, int]:
    """How many items to draw per complexity level. The top level is kept whole when configured;
    a level short of its share hands the rest to the other levels in proportion (the paper does
    not say how its level-3 shortfall was reallocated; this is our choice)."""
    levels = list(range(len(plan.proportions)))
    total = min(plan.target_size, sum(available.values()))
    targets = {lvl: 0 for lvl in levels}
    top = levels[-1]
    remaining = total
    open_levels = [l for l in levels if available.get(l, 0) > 0]
    if plan.keep_all_top_level and available.get(top, 0):
        targets[top] = min(available[top], total)
        remaining -= targets[top]
        open_levels.remove(top)
    while remaining > 0 and open_levels:
        weight = sum(plan.proportions[l] for l in open_levels)
        shares = {l: remaining * plan.proportions[l] / weight for l in open_levels}
        floors = {l: int(shares[l]) for l in open_levels}
        # largest remainders get the leftover units so the shares add up exactly
        leftover = remaining - sum(floors.values())
        for l in sorted(open_levels, key=lambda l: shares[l] - floors[l], reverse=True)[:leftover]:
            floors[l] += 1
        progressed = False
        for l in list(open_levels):
            room = available[l] - targets[l]
            take = min(room, floors[l])
            targets[l] += take
            remaining -= take
            progressed |= take > 0
            if targets[l] >= available[l]:
                open_levels.remove(l)
        if not progressed:
            break
    return targets


def even_quota(available: dict[str, int], n: int) -> dict[str, int]:
    """Split n over sources as evenly as their sizes allow (water filling)."""
    quota = {s: 0 for s in available}
    remaining = n
    open_sources = sorted(s for s in available if available[s] > 0)
    while remaining > 0 and open_sources:
        share, extra = divmod(remaining, len(open_sources))
        for i, s in enumerate(list(open_sources)):
            take = min(share + (1 if i < extra else 0), available[s] - quota[s])
            quota[s] += take
            remaining -= take
        open_sources = [s for s in open_sources if quota[s] < available[s]]
    return quota


def stratified_sample(scored: pd.DataFrame, plan: SamplingPlan) -> tuple[pd.DataFrame, dict]:
    """Clear rows sampled per complexity level and evenly over sources; returns (selection, report)."""
    pool = scored[scored["clear"]]
    available = pool.groupby("complexity").size().to_dict()
    targets = level_targets({int(k): int(v) for k, v in available.items()}, plan)
    rng = random.Random(plan.seed)
    chosen = []
    for level, n in targets.items():
        if n <= 0:
            continue
        rows = pool[pool["complexity"] == level]
        by_source = {s: g.index.tolist() for s, g in rows.groupby("source")}
        quota = even_quota({s: len(v) for s, v in by_source.items()}, n)
        for source, idx in sorted(by_source.items()):
            chosen.extend(rng.sample(sorted(idx), quota[source]))
    selection = scored.loc[sorted(chosen)].copy()
    report = {
        "available_by_level": {int(k): int(v) for k, v in available.items()},
        "targets_by_level": targets,
        "selected": len(selection),
        "dropped_unclear": int((~scored["clear"]).sum()),
    }
    return selection, report
