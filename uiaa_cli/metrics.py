"""Evaluation metrics of docs/maths.md, in numpy (no scipy import: ``evaluate`` must start fast).

Every function takes whole columns; the ground truth is always the votes (mean, std, RSD), whatever
kind of target trained the model. Undefined values (a constant column's correlation) are NaN.

``assess`` is the one place that decides which metrics apply to a model's outputs (its head's kind
and activation, and whether its ``p_*`` are a distribution); ``uiaa evaluate`` and training's
validation both call it, so the two commands agree. What does not apply is None, with a reason.
"""

from __future__ import annotations

import numpy as np

EPS = 2.2e-16
METRICS = ("accuracy", "srcc", "pcc", "mse", "mae", "kl", "emd", "std_srcc", "std_pcc",
           "score_sd", "true_sd", "sd_ratio", "std_mean", "true_std_mean", "std_ratio")
METRIC_LABELS = {
    "accuracy": "accuracy", "srcc": "SRCC", "pcc": "PCC", "mse": "MSE", "mae": "MAE", "kl": "KL",
    "emd": "EMD", "std_srcc": "std SRCC", "std_pcc": "std PCC",
    # Does the model play safe? The spread of its scores against the spread of the true means
    # (a ratio far below 1: everything about the average), and its predicted std against the votes'.
    "score_sd": "score sd", "true_sd": "true mean sd", "sd_ratio": "sd ratio",
    "std_mean": "mean std", "true_std_mean": "true mean std", "std_ratio": "std ratio",
}
SUM_TOLERANCE = 1e-3       # p_* rows must sum to 1 within this (4-decimal CSVs still pass)
NEGATIVE_TOLERANCE = 1e-6  # ... and be at least this close to non-negative
BINARY_SCORE = "a binary model's score is b_M * P(high), a confidence, not a rating"
LINEAR_HEAD = "the model's head is linear (trained with mse/huber): its p_* are raw outputs, not a distribution"


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
    """A model's score (and std) from its outputs (docs/maths.md): 2-set ``b_M * p_high``, std None;
    M-set ``sum_m b_m p_m`` with std ``sqrt(sum_m p_m (b_m - score)^2)``."""
    probs = np.asarray(probs, dtype=np.float64)
    bins = np.asarray(bins, dtype=np.float64)
    if probs.shape[1] == 2 and len(bins) != 2:
        return bins[-1] * probs[:, 1], None
    return distribution_score(probs, bins)


def distribution_problem(probs: np.ndarray) -> str | None:
    """Why the rows of ``probs`` are not probability distributions (finite, >= 0, summing to 1), or None."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        return f"{bad.sum():,} of {n:,} rows of p_* are missing or not finite"
    bad = (p < -NEGATIVE_TOLERANCE).any(axis=1)
    if bad.any():
        return f"{bad.sum():,} of {n:,} rows of p_* have negative values (lowest {p.min():.3g})"
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1) > SUM_TOLERANCE
    if bad.any():
        return f"{bad.sum():,} of {n:,} rows of p_* do not sum to 1 (sums {sums.min():.4g} to {sums.max():.4g})"
    return None


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and np.isfinite(a) else float("nan")


def assess(score: np.ndarray, mean: np.ndarray, threshold: float, *, kind: str | None = None,
           activation: str | None = None, probs: np.ndarray | None = None, std: np.ndarray | None = None,
           true_std: np.ndarray | None = None,
           rsd: np.ndarray | None = None) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every metric of docs/maths.md and the spread of the scores; what does not apply is None, with a reason.

    ``kind``/``activation`` describe the model's head when known (None: unknown). Distribution
    metrics (KL, EMD, std SRCC/PCC, mean std) need ``probs`` to be a distribution: a linear head's
    raw outputs, or rows that are not finite, non-negative and summing to 1, make them n/a. A binary
    model's score is not a rating, so its MSE/MAE are n/a. No value is NaN: undefined is None too."""
    score = np.asarray(score, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    values: dict[str, float | None] = dict.fromkeys(METRICS)
    reasons: dict[str, str] = {}

    def not_applicable(names: tuple[str, ...], why: str) -> None:
        for name in names:
            reasons.setdefault(name, why)

    values.update(accuracy=accuracy(score, mean, threshold), srcc=spearman(score, mean), pcc=pearson(score, mean))
    if kind == "binary":
        not_applicable(("mse", "mae"), BINARY_SCORE)
    else:
        values.update(mse=mse(score, mean), mae=mae(score, mean))
    score_sd, true_sd = float(np.std(score)), float(np.std(mean))
    values.update(score_sd=score_sd, true_sd=true_sd, sd_ratio=ratio(score_sd, true_sd))

    problem = None
    if activation == "linear":
        problem = LINEAR_HEAD
    elif probs is not None and probs.shape[1]:
        found = distribution_problem(probs)
        problem = f"p_* are not a distribution: {found}" if found else None
    elif std is not None and not np.isfinite(std).all() and np.isfinite(std).any():
        problem = f"the std column is missing or not finite in {(~np.isfinite(std)).sum():,} rows"
    if problem:  # nothing below is computed from these outputs (no log of a negative number)
        not_applicable(("kl", "emd", "std_srcc", "std_pcc", "std_mean", "std_ratio"), problem)
    if true_std is not None:
        values["true_std_mean"] = float(np.mean(true_std))
    else:
        not_applicable(("std_srcc", "std_pcc", "true_std_mean", "std_ratio"), "the labels have no std column")
    if probs is None or not probs.shape[1]:
        not_applicable(("kl", "emd"), "the predictions have no distribution (p_* columns)")
    elif rsd is None:
        not_applicable(("kl", "emd"), "the labels have no vote distribution")
    elif probs.shape != rsd.shape:
        not_applicable(("kl", "emd"), f"only for predictions over the labels' {rsd.shape[1]} bins "
                                      f"(these have {probs.shape[1]} p_* columns)")
    elif not problem:
        values.update(kl=kl_divergence(rsd, probs), emd=emd(rsd, probs))
    if std is None or not np.isfinite(std).any():
        not_applicable(("std_srcc", "std_pcc", "std_mean", "std_ratio"),
                       "no predicted std (a 2-set model predicts no distribution)")
    elif not problem:
        values["std_mean"] = float(np.mean(std))
        if true_std is not None:
            values.update(std_srcc=spearman(std, true_std), std_pcc=pearson(std, true_std),
                          std_ratio=ratio(values["std_mean"], values["true_std_mean"]))
    for name, value in values.items():
        if name in reasons:
            values[name] = None
        elif value is None or not np.isfinite(value):
            values[name] = None
            reasons[name] = "undefined: one side is constant, or fewer than 2 images"
    return values, {name: reasons[name] for name in METRICS if name in reasons}


def evaluate(score: np.ndarray, mean: np.ndarray, threshold: float, *, kind: str | None = None,
             activation: str | None = None, probs: np.ndarray | None = None, std: np.ndarray | None = None,
             true_std: np.ndarray | None = None, rsd: np.ndarray | None = None) -> dict[str, float | None]:
    """All metrics of docs/maths.md (``assess`` without the reasons); those that do not apply are None."""
    return assess(score, mean, threshold, kind=kind, activation=activation, probs=probs, std=std,
                  true_std=true_std, rsd=rsd)[0]
