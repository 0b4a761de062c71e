"""Evaluation metrics of SPEC §1, in numpy (no scipy import: ``evaluate`` must start fast).

Every function takes whole columns; the ground truth is always the votes (mean, std, RSD), whatever
kind of target trained the model. Undefined values (a constant column's correlation) are NaN.
"""

from __future__ import annotations

import numpy as np

EPS = 2.2e-16
METRICS = ("accuracy", "srcc", "pcc", "mse", "mae", "kl", "emd", "std_srcc", "std_pcc")
METRIC_LABELS = {
    "accuracy": "accuracy", "srcc": "SRCC", "pcc": "PCC", "mse": "MSE", "mae": "MAE", "kl": "KL",
    "emd": "EMD", "std_srcc": "std SRCC", "std_pcc": "std PCC",
}


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    new_group = np.concatenate(([True], sorted_x[1:] != sorted_x[:-1]))
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(x))
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(len(x))
    ranks[order] = average[group]
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation; NaN when either side is constant or there are fewer than 2 rows."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float(np.clip(np.dot(dx, dy) / denom, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on average ranks."""
    return pearson(rankdata(x), rankdata(y))


def accuracy(score: np.ndarray, mean: np.ndarray, threshold: float) -> float:
    """Share of images on the same side of ``threshold`` as their mean vote."""
    return float(np.mean((np.asarray(score) > threshold) == (np.asarray(mean) > threshold)))


def mse(score: np.ndarray, mean: np.ndarray) -> float:
    return float(np.mean((np.asarray(score, dtype=np.float64) - mean) ** 2))


def mae(score: np.ndarray, mean: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(score, dtype=np.float64) - mean)))


def kl_divergence(rsd: np.ndarray, predicted: np.ndarray, eps: float = EPS) -> float:
    """``mean_n sum_m y log((y + eps) / (t + eps))`` of the votes' RSD ``y`` against predictions ``t``."""
    y = np.asarray(rsd, dtype=np.float64)
    t = np.asarray(predicted, dtype=np.float64)
    return float(np.mean(np.sum(y * np.log((y + eps) / (t + eps)), axis=1)))


def emd(rsd: np.ndarray, predicted: np.ndarray) -> float:
    """``mean_n sqrt(mean_m (CDF_y - CDF_t)^2)``: the earth mover's distance with r = 2."""
    diff = np.cumsum(np.asarray(rsd, dtype=np.float64), axis=1) - np.cumsum(predicted, axis=1)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


def distribution_score(probs: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score ``sum_m b_m p_m`` and std ``sqrt(sum_m p_m (b_m - score)^2)`` of M-set predictions."""
    probs = np.asarray(probs, dtype=np.float64)
    score = probs @ bins
    std = np.sqrt(np.maximum(np.einsum("nm,nm->n", probs, (bins[None, :] - score[:, None]) ** 2), 0.0))
    return score, std


def predicted_score(probs: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's score (and std) from its outputs, SPEC §1: 2-set ``b_M * p_high``, std None;
    M-set ``sum_m b_m p_m`` with std ``sqrt(sum_m p_m (b_m - score)^2)``."""
    probs = np.asarray(probs, dtype=np.float64)
    bins = np.asarray(bins, dtype=np.float64)
    if probs.shape[1] == 2 and len(bins) != 2:
        return bins[-1] * probs[:, 1], None
    return distribution_score(probs, bins)


def evaluate(score: np.ndarray, mean: np.ndarray, threshold: float, *, std: np.ndarray | None = None,
             true_std: np.ndarray | None = None, probs: np.ndarray | None = None,
             rsd: np.ndarray | None = None) -> dict[str, float | None]:
    """All metrics of SPEC §1; those that do not apply (no std, no M-set distribution) are None."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    out.update(accuracy=accuracy(score, mean, threshold), srcc=spearman(score, mean), pcc=pearson(score, mean),
               mse=mse(score, mean), mae=mae(score, mean))
    if probs is not None and rsd is not None and probs.shape == rsd.shape:
        out.update(kl=kl_divergence(rsd, probs), emd=emd(rsd, probs))
    if std is not None and true_std is not None:
        out.update(std_srcc=spearman(std, true_std), std_pcc=pearson(std, true_std))
    return out
