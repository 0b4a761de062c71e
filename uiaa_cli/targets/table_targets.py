"""A labels table's columns as training targets and ground truth, in numpy (no torch).

``labels_of`` checks a table made by ``uiaa labels`` (of a cache or a file) and pulls out the target
matrix the model trains on and the ground truth the metrics compare with; with ``--kind`` it derives
the targets from the table's vote columns by ``make_targets``, the code of ``uiaa labels`` itself
(the kinds are defined in docs/maths.md, the table's columns in docs/formats.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.table import Table
from uiaa_cli.targets.labels import (
    LabelSettings,
    check_label_values,
    make_targets,
    probability_columns,
    rsd_columns,
    table_bins,
    table_kind,
    table_threshold,
)


@dataclass
class Labels:
    """What the metrics need of a labels table, as matrices."""

    table: Table
    targets: np.ndarray  # (N, K) float32
    mean: np.ndarray
    std: np.ndarray | None
    rsd: np.ndarray | None
    threshold: float


def labels_of(table: Table, path: str, bins: np.ndarray | None = None,
              derive: LabelSettings | None = None) -> Labels:
    """Check a labels table (of a cache or a file) and pull out targets and ground truth.

    With ``derive`` the targets are made from the table's vote columns by ``labels.make_targets``
    (the code of ``uiaa labels``); rows that kind leaves out (binary's margin) get NaN targets.
    """
    targets = probability_columns(table)
    missing = [c for c in ("image", "mean") if c not in table]
    if derive is None and (missing or not targets):
        raise UiaaError(f"not a labels table made by 'uiaa labels': no {', '.join(missing or ['p_* target'])} "
                        "column(s)", where=at(path))
    check_label_values(table, path)
    own_bins = table_bins(table)
    if bins is not None and not np.array_equal(own_bins, bins):
        raise UiaaError(f"its scale {own_bins.tolist()} differs from the training data's {bins.tolist()}",
                        where=at(path))
    rsd_names = rsd_columns(table)
    rsd = table.matrix(rsd_names) if len(own_bins) and all(n in table for n in rsd_names) else None
    if derive is not None and (missing or rsd is None):
        raise UiaaError(f"--kind needs the vote columns of a labels table ({', '.join(rsd_names) or '1..10'}, "
                        "the share of votes per score) and 'mean'; this table lacks them", where=at(path))
    threshold = table_threshold(table, own_bins)
    if derive is None:
        matrix = table.matrix(targets).astype(np.float32)
    else:
        made = make_targets(vote_counts(table, rsd), own_bins, derive)
        matrix = np.full((len(rsd), len(made.columns)), np.nan, dtype=np.float32)
        matrix[made.keep] = made.targets
        threshold = float(derive.parameters(own_bins)["threshold"])  # as 'uiaa labels --kind' records it
    return Labels(table, matrix, table.matrix(["mean"])[:, 0],
                  table.matrix(["std"])[:, 0] if "std" in table else None, rsd, threshold)


def vote_counts(table: Table, rsd: np.ndarray) -> np.ndarray:
    """The vote counts behind a labels table: ``round(rsd * votes)`` when that gives back whole numbers
    (AVA: then ``make_targets`` sees the very counts ``labels`` saw), else the RSD itself (its moments
    are the same; ``make_targets`` normalises each row)."""
    if "votes" in table:
        votes = table.matrix(["votes"])[:, 0]
        counts = rsd * votes[:, None]
        whole = np.rint(counts)
        if np.all(np.abs(counts - whole) < 1e-6 * np.maximum(votes[:, None], 1)) and np.all(whole.sum(axis=1) >= 1):
            return whole
    return rsd


def kind_of(table: Table, labels: Labels, derive: LabelSettings | None) -> tuple[str, dict[str, Any]]:
    """The kind of the targets trained on and its parameters (those ``labels`` records for it)."""
    if derive is None:
        attrs = table.attrs
        kind = table_kind(table)
        params = {k: attrs[k] for k in ("lam", "cap", "divisor", "delta") if k in attrs}
        return kind, {**params, "threshold": labels.threshold, "derived": False}
    return derive.kind, {**derive.parameters(table_bins(table)), "derived": True}
