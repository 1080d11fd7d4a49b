"""Intervals for arm accuracies and their paired differences.

Each arm has a seeds × problems matrix of 0/1 scores on an evaluation set. A bootstrap replicate
draws seeds with replacement and, independently, problems with replacement, and takes the mean of
the drawn cells; the same draw is used for every arm, so a difference between two arms is paired by
seed and by problem. Intervals are the percentile interval of the replicates. The minimum detectable
difference is (z_(1-α/2) + z_power) × the bootstrap standard error of the paired difference: the
smallest true effect these seeds and problems would find at level α with that power."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def replicate_means(matrices: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Per arm, `resamples` bootstrap means (percent) from one shared draw of seeds and problems."""
    shapes = {m.shape for m in matrices.values()}
    if len(shapes) != 1:
        raise ValueError(f"every arm needs the same seeds × problems matrix, got shapes {sorted(shapes)}")
    n_seeds, n_problems = shapes.pop()
    rng = np.random.default_rng(seed)
    out = {name: np.empty(resamples) for name in matrices}
    for r in range(resamples):
        seeds = rng.integers(0, n_seeds, n_seeds)
        problems = rng.integers(0, n_problems, n_problems)
        for name, matrix in matrices.items():
            out[name][r] = matrix[np.ix_(seeds, problems)].mean() * 100
    return out


def summarize(matrices: dict[str, np.ndarray], reference: str, resamples: int = 2000, confidence: float = 0.95,
              seed: int = 0, power: float = 0.8) -> dict:
    """{"arms": {name: {mean, low, high, per_seed}}, "differences": {name: {mean, low, high, se, mde}}}:
    accuracies in percent, differences as arm minus `reference`, in points."""
    means = replicate_means(matrices, resamples, seed)
    tail = (1 - confidence) / 2 * 100
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(power)
    arms = {}
    for name, matrix in matrices.items():
        low, high = np.percentile(means[name], [tail, 100 - tail])
        arms[name] = {"mean": float(matrix.mean() * 100), "low": float(low), "high": float(high),
                      "per_seed": [float(v * 100) for v in matrix.mean(axis=1)]}
    differences = {}
    for name, matrix in matrices.items():
        if name == reference:
            continue
        delta = means[name] - means[reference]
        low, high = np.percentile(delta, [tail, 100 - tail])
        se = float(delta.std(ddof=1))
        differences[name] = {"mean": float((matrix - matrices[reference]).mean() * 100), "low": float(low),
                             "high": float(high), "se": se, "mde": z * se,
                             "excludes_zero": bool(low > 0 or high < 0)}
    return {"arms": arms, "differences": differences, "reference": reference, "confidence": confidence,
            "resamples": resamples, "power": power}
