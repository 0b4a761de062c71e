"""Predictions joined with labels on ``image``, scored with every metric that applies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from uiaa_cli import metrics
from uiaa_cli.errors import UiaaError
from uiaa_cli.labels import bin_name, probability_columns, rsd_columns, table_bins, table_threshold
from uiaa_cli.tables import Table


@dataclass
class Evaluation:
    metrics: dict[str, float | None]
    joined: int
    predictions_unmatched: list[str] = field(default_factory=list)
    labels_unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def require(table: Table, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise UiaaError(f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(table.names)})")


def unique_images(table: Table, what: str) -> np.ndarray:
    images = table["image"].astype(str)
    unique, counts = np.unique(images, return_counts=True)
    if np.any(counts > 1):
        raise UiaaError(f"{what}: image {unique[np.argmax(counts > 1)]} appears more than once")
    return images


def evaluate_tables(predictions: Table, labels: Table, threshold: float | None = None) -> Evaluation:
    """Join on image and compute the metrics of SPEC §1 against the votes in ``labels``."""
    require(predictions, ["image", "score"], "the predictions table")
    require(labels, ["image", "mean"], "the labels table")
    pred_images = unique_images(predictions, "predictions")
    label_images = unique_images(labels, "labels")
    _, pi, li = np.intersect1d(pred_images, label_images, assume_unique=True, return_indices=True)
    order = np.argsort(pi)  # keep the predictions' order
    pi, li = pi[order], li[order]
    result = Evaluation({}, len(pi),
                        predictions_unmatched=list(np.delete(pred_images, pi)),
                        labels_unmatched=list(np.delete(label_images, li)))
    if not len(pi):
        raise UiaaError("no image of the predictions is in the labels table: nothing to evaluate")
    pred, lab = predictions.take(pi), labels.take(li)
    bins = table_bins(labels)
    t = threshold if threshold is not None else table_threshold(labels, bins)
    score = pred.matrix(["score"])[:, 0]
    if not np.all(np.isfinite(score)):
        raise UiaaError("the predictions table has missing or non-finite scores")
    std = pred.matrix(["std"])[:, 0] if "std" in pred else None
    true_std = lab.matrix(["std"])[:, 0] if "std" in lab else None
    probs = rsd = None
    p_names = probability_columns(pred)
    if len(bins) and all(n in lab for n in rsd_columns(labels)):
        rsd = lab.matrix(rsd_columns(labels))
        wanted = [f"p_{bin_name(b)}" for b in bins]
        if p_names == wanted:
            probs = pred.matrix(wanted)
        elif p_names:
            result.notes.append(f"KL and EMD need the predicted distribution over {len(bins)} bins "
                                f"({wanted[0]}..{wanted[-1]}); the predictions have {', '.join(p_names)}")
    elif not len(bins):
        result.notes.append("the labels table has no vote distribution: KL and EMD not applicable")
    if std is not None and not np.any(np.isfinite(std)):
        std = None  # a 2-set model predicts no distribution, so no std
        result.notes.append("the predictions' std column is empty (a 2-set model): std SRCC/PCC not applicable")
    elif std is None:
        result.notes.append("the predictions have no std column: std SRCC/PCC not applicable")
    result.metrics = metrics.evaluate(score, lab.matrix(["mean"])[:, 0], t, std=std, true_std=true_std,
                                      probs=probs, rsd=rsd)
    return result


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if np.isnan(value):
        return "nan"
    return f"{value:.4f}"


def as_text(result: Evaluation) -> str:
    width = max(len(v) for v in metrics.METRIC_LABELS.values())
    lines = [f"{'metric':<{width}}  value", f"{'images':<{width}}  {result.joined}"]
    for key in metrics.METRICS:
        lines.append(f"{metrics.METRIC_LABELS[key]:<{width}}  {format_value(result.metrics[key])}")
    return "\n".join(lines) + "\n"


def as_json(result: Evaluation) -> str:
    clean = {k: (None if v is None or np.isnan(v) else v) for k, v in result.metrics.items()}
    return json.dumps({"images": result.joined, "metrics": clean,
                       "predictions_unmatched": len(result.predictions_unmatched),
                       "labels_unmatched": len(result.labels_unmatched)}, indent=2) + "\n"


def as_csv(result: Evaluation) -> str:
    values = ["" if v is None or np.isnan(v) else repr(float(v)) for v in result.metrics.values()]
    return "images," + ",".join(metrics.METRICS) + "\n" + f"{result.joined}," + ",".join(values) + "\n"
