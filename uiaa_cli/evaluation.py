"""Predictions joined with labels on ``image``, scored with every metric that applies.

What applies depends on the model's head: its kind and activation travel with the predictions
(attributes of Parquet/HDF5 tables and the constant columns ``kind`` and ``activation`` that
``uiaa predict -o`` writes, see ``head_record``), and without them the ``p_*`` columns are checked
to be a distribution before any distribution metric is computed (``metrics.assess``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uiaa_cli import metrics
from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.table import Table
from uiaa_cli.targets.labels import bin_name, probability_columns, rsd_columns, table_bins, table_threshold

HEAD_COLUMNS = ("kind", "activation")
LINEAR_LOSSES = ("mse", "huber")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Evaluation:
    metrics: dict[str, float | None]
    joined: int
    predictions_unmatched: list[str] = field(default_factory=list)
    labels_unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # metric -> why it is not applicable
    head: dict[str, str | None] = field(default_factory=dict)
    rows: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # joined rows


# ------------------------------------------------------------------------------- the head


def head_record(config: dict[str, Any]) -> dict[str, str]:
    """What ``predict -o`` writes about the model's head (as attributes and as constant columns):
    the kind of target it was trained on and its activation (softmax, sigmoid or linear)."""
    activation = config.get("activation") or ("linear" if config.get("loss") in LINEAR_LOSSES else "softmax")
    return {"kind": str(config.get("kind") or ""), "activation": str(activation)}


def head_of(table: Table, name: str) -> dict[str, str | None]:
    """The head that made a predictions table: its attributes, else its ``kind``/``activation``
    columns, else unknown (None; the ``p_*`` columns are then judged by their values alone)."""
    head: dict[str, str | None] = {}
    for key in HEAD_COLUMNS:
        value = table.attrs.get(key)
        if not value and key in table:
            values = np.unique(np.asarray(table[key]).astype(str))
            if len(values) > 1:
                raise UiaaError(f"the predictions come from more than one model: column {key!r} holds "
                                f"{', '.join(values[:4])}", where=at(name))
            value = values[0] if len(values) else None
        head[key] = str(value) if value else None
    if head["activation"] is None and table.attrs.get("loss"):
        head["activation"] = "linear" if table.attrs["loss"] in LINEAR_LOSSES else "softmax"
    return head


# -------------------------------------------------------------------------------- reading


def require(table: Table, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise UiaaError(f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(table.names)})")


def unique_images(table: Table, name: str) -> np.ndarray:
    images = table["image"].astype(str)
    unique, counts = np.unique(images, return_counts=True)
    if np.any(counts > 1):
        raise UiaaError(f"image {unique[np.argmax(counts > 1)]} appears more than once", where=at(name))
    return images


def numeric_column(table: Table, column: str, name: str, *, finite: bool = True) -> np.ndarray:
    """A column as float64; a value that is not a number (or not finite) is one error naming the row."""
    values = np.asarray(table[column])
    if values.dtype.kind in "biuf":
        numbers = values.astype(np.float64)
    else:  # text: the reader found something that is not a number; find the first such row
        text = values.astype(str)
        numbers = np.full(len(text), np.nan)
        for i, value in enumerate(text):
            try:
                numbers[i] = float(value) if value.strip() else np.nan
            except ValueError:
                raise UiaaError(f"row {i + 1} (image {table['image'][i]}): {column} {value!r} is not a number",
                                where=at(name)) from None
    if finite and not np.isfinite(numbers).all():
        i = int(np.flatnonzero(~np.isfinite(numbers))[0])
        raise UiaaError(f"row {i + 1} (image {table['image'][i]}): {column} is missing or not finite "
                        f"({numbers[i]!r})", where=at(name))
    return numbers


# -------------------------------------------------------------------------------- joining


def file_stems(images: np.ndarray) -> np.ndarray:
    """``ph2/100100.jpg`` -> ``100100``: the name without folders and without an image extension."""
    base = np.char.rpartition(np.char.replace(images, "\\", "/"), "/")[:, 2]
    stem, dot, suffix = (np.char.rpartition(base, ".")[:, i] for i in range(3))
    strip = (dot == ".") & (stem != "") & np.isin(np.char.lower(np.char.add(".", suffix)), IMAGE_SUFFIXES)
    return np.where(strip, stem, base)


def join(pred_images: np.ndarray, label_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the matching images (in the predictions' order)."""
    _, pi, li = np.intersect1d(pred_images, label_images, assume_unique=True, return_indices=True)
    order = np.argsort(pi)
    return pi[order], li[order]


def join_tables(predictions: Table, labels: Table, pred_name: str,
                label_name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Join on ``image``; when paths do not match (``ph2/100100.jpg`` against ``100100``), on the file
    stems. Nothing joined is one error that names both files and shows what their names look like."""
    pred_images = unique_images(predictions, pred_name)
    label_images = unique_images(labels, label_name)
    pi, li = join(pred_images, label_images)
    notes: list[str] = []
    if len(pi) < len(pred_images):
        pred_stems, label_stems = file_stems(pred_images), file_stems(label_images)
        if len(np.unique(pred_stems)) == len(pred_stems) and len(np.unique(label_stems)) == len(label_stems):
            spi, sli = join(pred_stems, label_stems)
            if len(spi) > len(pi):
                pi, li = spi, sli
                notes.append(f"joined on file names without folder and extension ({str(pred_images[pi[0]])!r} "
                             f"is {str(label_images[li[0]])!r})")
    if not len(pi):
        raise UiaaError(f"no image of the predictions is in the labels table {label_name}, not even by file "
                        f"name without folder and extension: the predictions name images like "
                        f"{', '.join(repr(str(x)) for x in pred_images[:2])}, the labels like "
                        f"{', '.join(repr(str(x)) for x in label_images[:2])}", where=at(pred_name))
    return pi, li, notes


# ----------------------------------------------------------------------------- evaluating


def evaluate_tables(predictions: Table, labels: Table, threshold: float | None = None, *,
                    pred_name: str = "predictions", label_name: str = "labels") -> Evaluation:
    """Join on image and compute the metrics of docs/maths.md against the votes in ``labels``."""
    require(predictions, ["image", "score"], f"{pred_name}: the predictions table")
    require(labels, ["image", "mean"], f"{label_name}: the labels table")
    pi, li, notes = join_tables(predictions, labels, pred_name, label_name)
    pred, lab = predictions.take(pi), labels.take(li)
    result = Evaluation({}, len(pi), notes=notes, rows=(pi, li),
                        predictions_unmatched=list(np.delete(predictions["image"].astype(str), pi)),
                        labels_unmatched=list(np.delete(labels["image"].astype(str), li)))
    result.head = head_of(predictions, pred_name)
    bins = table_bins(labels)
    t = threshold if threshold is not None else table_threshold(labels, bins)
    score = numeric_column(pred, "score", pred_name)
    std = numeric_column(pred, "std", pred_name, finite=False) if "std" in pred else None
    true_std = numeric_column(lab, "std", label_name) if "std" in lab else None
    mean = numeric_column(lab, "mean", label_name)
    p_names = probability_columns(pred)
    probs = rsd = None
    if len(bins) and all(n in lab for n in rsd_columns(labels)):
        rsd = lab.matrix(rsd_columns(labels))
    if p_names:
        wanted = [f"p_{bin_name(b)}" for b in bins]
        # Distribution metrics compare over the labels' bins: p_* named otherwise (p_low, p_high) stay
        # unchecked as a distribution but say why KL/EMD do not apply.
        names = wanted if len(bins) and p_names == wanted else p_names
        probs = np.stack([numeric_column(pred, n, pred_name, finite=False) for n in names], axis=1)
    result.metrics, result.reasons = metrics.assess(score, mean, t, kind=result.head["kind"],
                                                    activation=result.head["activation"], probs=probs,
                                                    std=std, true_std=true_std, rsd=rsd)
    return result


# ------------------------------------------------------------------------------ reporting


def format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def as_text(result: Evaluation) -> str:
    """The table for people; each n/a points to its reason, listed once below the table."""
    width = max(len(v) for v in metrics.METRIC_LABELS.values())
    footnotes: list[str] = []
    lines = [f"{'metric':<{width}}  {'value':>8}", f"{'images':<{width}}  {result.joined:>8}"]
    for key in metrics.METRICS:
        line = f"{metrics.METRIC_LABELS[key]:<{width}}  {format_value(result.metrics[key]):>8}"
        if key in result.reasons:
            if result.reasons[key] not in footnotes:
                footnotes.append(result.reasons[key])
            line += f"  [{footnotes.index(result.reasons[key]) + 1}]"
        lines.append(line)
    lines += [f"[{i}] n/a: {why}" for i, why in enumerate(footnotes, start=1)]
    return "\n".join(lines) + "\n"


def as_dict(result: Evaluation) -> dict[str, Any]:
    """What ``evaluate --json`` prints (and ``uiaa_cli.evaluate`` returns)."""
    return {"images": result.joined, "metrics": dict(result.metrics), "not_applicable": dict(result.reasons),
            "head": dict(result.head), "predictions_unmatched": len(result.predictions_unmatched),
            "labels_unmatched": len(result.labels_unmatched)}


def as_json(result: Evaluation) -> str:
    return json.dumps(as_dict(result), indent=2, allow_nan=False) + "\n"


def as_csv(result: Evaluation) -> str:
    """One row: images, every metric (``n/a`` where it does not apply, which pandas reads as NaN), and
    ``not_applicable``: ``metric metric: reason`` for each reason, separated by ``; ``."""
    values = ["n/a" if v is None else repr(float(v)) for v in result.metrics.values()]
    grouped: dict[str, list[str]] = {}
    for name, why in result.reasons.items():
        grouped.setdefault(why, []).append(name)
    reasons = "; ".join(f"{' '.join(names)}: {why}" for why, names in grouped.items()).replace('"', "'")
    return ("images," + ",".join(metrics.METRICS) + ",not_applicable\n"
            + f"{result.joined}," + ",".join(values) + f',"{reasons}"\n')
