"""uiaa's Python API: what ``labels`` and ``evaluate`` do, on arrays and DataFrames (docs/python.md).

Each function is a thin layer over the code the command runs (``targets/``, ``evaluation.py``,
``tables/``), so its numbers are the command's. :class:`uiaa_cli.Scorer` (``predict/scorer.py``)
and :func:`uiaa_cli.score_dataset` (``predict/on_ray.py``) are the scoring half. Errors are
``uiaa_cli.errors.UiaaError``, whose message is the command's one line. Importing this module
imports neither torch nor pandas; the functions that return DataFrames import pandas.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables.table import Table

if TYPE_CHECKING:
    import pandas as pd


def make_targets(counts: Any, bins: Any = None, kind: str = "gauss-mv", lam: float = 0.5, cap: float = 1.5, *,
                 delta: float = 0.0, threshold: float | None = None, divisor: str = "2var",
                 rater_var: float = 0.0) -> np.ndarray:
    """The training targets of ``uiaa labels --kind KIND`` for a matrix of vote counts.

    ``counts``: ``(N, M)`` votes per image and bin (an array, a list of lists or a DataFrame of
    numbers), every row with at least one vote; ``bins``: the ``M`` scores the columns stand for
    (default ``1..M``). ``kind``, ``lam``, ``cap``, ``delta``, ``threshold``, ``divisor`` and
    ``rater_var`` are the options of ``uiaa labels`` (docs/maths.md). Returns the ``(N, K)`` targets:
    ``K = M`` per-bin memberships, or ``K = 2`` (``p_low, p_high``) for ``binary`` and ``soft``. A
    ``binary`` row inside ``--delta``'s margin, which ``labels`` leaves out, is a row of NaN.

    >>> from uiaa_cli import make_targets
    >>> p = make_targets([[0, 0, 1, 4, 10, 6, 2, 1, 0, 0]], range(1, 11))
    >>> p.shape, round(float(p.sum()), 12)
    ((1, 10), 1.0)
    >>> make_targets([[1, 3], [3, 1]], [0, 1], kind="binary", threshold=0.5).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    from uiaa_cli.targets import labels

    matrix = np.asarray(counts.to_numpy() if hasattr(counts, "to_numpy") else counts, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise UiaaError(f"counts must be a matrix (N, M) with M >= 2 bins, not of shape {matrix.shape}")
    values = np.arange(1.0, matrix.shape[1] + 1) if bins is None else np.asarray(list(bins), dtype=np.float64)
    if values.shape != (matrix.shape[1],) or not np.all(np.diff(values) > 0) or not np.isfinite(values).all():
        raise UiaaError(f"bins must be {matrix.shape[1]} strictly increasing finite scores, one per column of counts")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise UiaaError("counts must be finite and >= 0")
    if (matrix.sum(axis=1) <= 0).any():
        raise UiaaError(f"row {int(np.argmax(matrix.sum(axis=1) <= 0))} of counts has no votes")
    try:
        settings = labels.LabelSettings(kind, lam, cap, delta, threshold, divisor, rater_var)
    except ValueError as e:
        raise UiaaError(str(e)) from None
    made = labels.make_targets(matrix, values, settings)
    out = np.full((len(matrix), len(made.columns)), np.nan)
    out[made.keep] = made.targets
    return out


def read_ratings(path: str | os.PathLike, format: str | None = None, scale: str | None = None) -> pd.DataFrame:
    """A ratings file as a DataFrame of vote counts: ``image``, then one column per score (``1`` ..
    ``10`` for AVA), whatever the source: AVA.txt, a counts table, KonIQ-style fractions, a long table
    of single votes (``image,score``) or a folder of photos' XMP stars, as ``uiaa labels`` reads them
    (``format`` and ``scale`` are its ``--format`` and ``--scale``). ``df.attrs`` holds ``bins`` and
    ``source_format``; ``df.iloc[:, 1:]`` is the matrix :func:`make_targets` takes.

    >>> from uiaa_cli import read_ratings
    >>> _ = open("votes.csv", "w").write("image,score\\na.jpg,4\\na.jpg,5\\nb.jpg,2\\n")
    >>> votes = read_ratings("votes.csv", scale="1..5")
    >>> votes.to_dict("list")
    {'image': ['a.jpg', 'b.jpg'], '1': [0.0, 0.0], '2': [0.0, 1.0], '3': [0.0, 0.0], '4': [1.0, 0.0], '5': [1.0, 0.0]}
    """
    import pandas as pd

    from uiaa_cli.targets.labels import bin_name
    from uiaa_cli.targets.ratings import read_ratings as read

    ratings = read(os.fspath(path), format, scale)
    frame = pd.DataFrame({"image": ratings.images.astype(str),
                          **{bin_name(b): ratings.counts[:, j] for j, b in enumerate(ratings.bins)}})
    frame.attrs.update(bins=[float(b) for b in ratings.bins], source_format=ratings.source_format)
    return frame


def make_labels(ratings: pd.DataFrame | str | os.PathLike, kind: str = "gauss-mv", lam: float = 0.5,
                cap: float = 1.5, *, delta: float = 0.0, threshold: float | None = None, divisor: str = "2var",
                rater_var: float | None = None, min_votes: float = 0, format: str | None = None,
                scale: str | None = None) -> pd.DataFrame:
    """The table ``uiaa labels`` writes, as a DataFrame: ``image, votes, mean, std``, the vote shares
    per bin and the targets ``p_*``, with the same rows left out (``min_votes``, a binary margin).

    ``ratings``: a ratings file (read as :func:`read_ratings` reads it) or a DataFrame of counts
    (``image`` and one column per score, named by the score, as :func:`read_ratings` gives).
    ``rater_var`` defaults as ``labels --rater-var`` does (1 for XMP stars, else 0). ``df.attrs``
    holds the table's attributes (kind, bins, parameters), which :func:`evaluate` reads.

    >>> import pandas as pd
    >>> from uiaa_cli import make_labels
    >>> counts = pd.DataFrame({"image": ["a", "b"], "1": [0, 3], "2": [1, 1], "3": [3, 0]})
    >>> table = make_labels(counts, kind="rsd")
    >>> table[["image", "votes", "mean", "p_3"]].to_dict("list")
    {'image': ['a', 'b'], 'votes': [4, 4], 'mean': [2.75, 1.25], 'p_3': [0.75, 0.0]}
    """
    from uiaa_cli.targets.labels import RATER_VARIANCE, LabelSettings, build_labels

    if isinstance(ratings, (str, os.PathLike)):
        frame = read_ratings(ratings, format, scale)
        stars = frame.attrs["source_format"] == "xmp"
    else:
        frame, stars = ratings, False
    images, counts, bins = counts_of(frame)
    try:
        settings = LabelSettings(kind, lam, cap, delta, threshold, divisor,
                                 (RATER_VARIANCE if stars else 0.0) if rater_var is None else rater_var)
    except ValueError as e:
        raise UiaaError(str(e)) from None
    table, _ = build_labels(images, counts, bins, settings, min_votes=min_votes)
    return to_frame(table)


def counts_of(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, counts, bins)`` of a DataFrame of counts: ``image`` and the columns named by a score."""
    if "image" not in frame.columns:
        raise UiaaError(f"a table of counts needs an 'image' column (has: {', '.join(map(str, frame.columns))})")
    names, bins = [], []
    for name in frame.columns:
        try:
            bins.append(float(name))
            names.append(name)
        except (TypeError, ValueError):
            continue
    if len(bins) < 2 or not np.all(np.diff(bins) > 0):
        raise UiaaError("a table of counts needs two or more columns named by increasing scores (1, 2, ...)")
    counts = frame[names].to_numpy(dtype=np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts.sum(axis=1) <= 0).any():
        raise UiaaError("vote counts must be finite, >= 0, and at least one vote per image")
    return np.asarray(frame["image"].astype(str).tolist(), dtype=str), counts, np.asarray(bins)


def evaluate(predictions: Any, labels: Any, threshold: float | None = None) -> dict[str, Any]:
    """What ``uiaa evaluate PREDS LABELS --json`` prints, as a dict: ``images`` (joined), ``metrics``
    (accuracy, SRCC, PCC, MSE, MAE, KL, EMD, std SRCC/PCC, ...; None where one does not apply),
    ``not_applicable`` (why), ``head``, ``predictions_unmatched`` and ``labels_unmatched`` (counts).

    ``predictions``: a DataFrame with ``image, score[, std][, p_*]`` (what :meth:`Scorer.score`
    returns) or a table file; ``labels``: a labels DataFrame (:func:`make_labels`) or file. Rows are
    joined on ``image``, else on file names without folder and extension, as the command does.

    >>> import pandas as pd
    >>> from uiaa_cli import evaluate, make_labels
    >>> labels = make_labels(pd.DataFrame({"image": ["a", "b", "c"], "1": [0, 3, 1], "2": [1, 1, 2],
    ...                                    "3": [3, 0, 1]}))
    >>> preds = pd.DataFrame({"image": ["a", "b", "c"], "score": [2.9, 1.1, 2.2]})
    >>> result = evaluate(preds, labels)
    >>> result["images"], result["metrics"]["srcc"]
    (3, 1.0)
    """
    from uiaa_cli import evaluation
    from uiaa_cli.targets.labels import check_label_values

    preds, pred_name = as_table(predictions, "predictions")
    if "error" in preds:  # Scorer.score keeps an image it could not read as a row with its reason
        preds = preds.take(np.flatnonzero(np.isin(preds["error"].astype(str), ["", "nan", "None"])))
    labs, label_name = as_table(labels, "labels")
    check_label_values(labs, label_name)
    result = evaluation.evaluate_tables(preds, labs, threshold, pred_name=pred_name, label_name=label_name)
    return evaluation.as_dict(result)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Any table uiaa reads or writes (CSV, TSV, Parquet, HDF5, a cache's labels) as a DataFrame,
    with its attributes (kind, bins, model, ...) in ``df.attrs``.

    >>> import pandas as pd
    >>> from uiaa_cli import read_table
    >>> pd.DataFrame({"image": ["a"], "score": [5.5]}).to_csv("preds.csv", index=False)
    >>> read_table("preds.csv").to_dict("list")
    {'image': ['a'], 'score': [5.5]}
    """
    from uiaa_cli.tables.table import read_table as read

    return to_frame(read(os.fspath(path)))


# ------------------------------------------------------------------------- DataFrames <-> tables


def to_frame(table: Table) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(dict(table.columns))
    frame.attrs.update(table.attrs)
    return frame


def as_table(value: Any, what: str) -> tuple[Table, str]:
    """A DataFrame, a ``Table`` or a file as a ``Table`` and the name its errors give."""
    from uiaa_cli.tables.table import read_table as read

    if isinstance(value, Table):
        return value, what
    if isinstance(value, (str, os.PathLike)):
        return read(os.fspath(value)), os.fspath(value)
    if not hasattr(value, "columns") or not hasattr(value, "attrs"):
        raise UiaaError(f"{what}: expected a DataFrame or a table file, not a {type(value).__name__}")
    columns: dict[str, np.ndarray] = {}
    for name in value.columns:
        column = value[name]
        values = column.to_numpy()
        if values.dtype.kind not in "biuf":  # text (object or pandas' str): numpy str, as the readers give
            values = np.asarray(column.astype(str).tolist(), dtype=str)
        columns[str(name)] = values
    return Table(columns, dict(value.attrs)), what
