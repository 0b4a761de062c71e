"""Vote counts to training targets: the unified probabilistic formulation, in pure numpy.

Every function takes a counts matrix ``(N, M)`` and the ordered bin values ``(M,)`` and works on
all rows at once. See SPEC §1 for the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables import Table

KINDS = ("binary", "soft", "rsd", "gauss-nv", "gauss-mv")
TWO_SET_KINDS = ("binary", "soft")
DIVISORS = ("2var", "var")


@dataclass(frozen=True)
class LabelSettings:
    """Parameters of a target kind; defaults are the unified formulation's."""

    kind: str = "gauss-mv"
    lam: float = 0.5
    cap: float = 1.5
    delta: float = 0.0
    threshold: float | None = None
    divisor: str = "2var"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"--lam must lie in [0, 1], got {self.lam}")
        if not self.cap > 0:
            raise ValueError(f"--cap must be positive, got {self.cap}")
        if not self.delta >= 0:
            raise ValueError(f"--delta must be >= 0, got {self.delta}")
        if self.divisor not in DIVISORS:
            raise ValueError(f"--divisor must be one of {', '.join(DIVISORS)}, got {self.divisor!r}")


def default_threshold(bins: np.ndarray) -> float:
    """``b_ceil(M/2)``: 5 on 1..10, 3 on 1..5."""
    m = len(bins)
    return float(bins[(m + 1) // 2 - 1])


def moments(counts: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Votes ``n``, RSD ``y``, mean ``mu`` and population variance ``var`` of each row."""
    counts = np.asarray(counts, dtype=np.float64)
    bins = np.asarray(bins, dtype=np.float64)
    n = counts.sum(axis=1)
    rsd = counts / n[:, None]
    mu = (rsd * bins).sum(axis=1)  # not BLAS: the same bits whatever the chunk of rows
    var = np.einsum("nm,nm->n", rsd, (bins[None, :] - mu[:, None]) ** 2)
    return n, rsd, mu, np.maximum(var, 0.0)


def discretised_gaussian(mu: np.ndarray, var: np.ndarray, bins: np.ndarray, divisor: str = "2var") -> np.ndarray:
    """``p_m ∝ exp(-(b_m - mu)^2 / (k var))``, L1-normalised over the bins; k = 2 (or 1 for ``var``).

    Stable for any variance: each exponent is taken relative to the nearest bin's, so the largest
    term is exactly ``exp(0)``; zero variance gives a one-hot vector at the nearest bin.
    """
    bins = np.asarray(bins, dtype=np.float64)
    sq = (bins[None, :] - np.asarray(mu, dtype=np.float64)[:, None]) ** 2
    excess = sq - sq.min(axis=1, keepdims=True)
    scale = (2.0 if divisor == "2var" else 1.0) * np.asarray(var, dtype=np.float64)
    positive = scale > 0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        logits = np.where(positive[:, None], -excess / np.where(positive, scale, 1.0)[:, None], 0.0)
    logits = np.where(~positive[:, None] & (excess > 0), -np.inf, logits)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class Targets:
    """Targets of the kept rows and what was left out."""

    keep: np.ndarray  # boolean mask over the input rows
    targets: np.ndarray  # (kept, 2) or (kept, M)
    columns: list[str]
    left_out_margin: int = 0
    reconstruction_error: float | None = None


def target_columns(kind: str, bins: np.ndarray) -> list[str]:
    """Target column names: ``p_low, p_high`` for 2-set kinds, ``p_<bin>`` for M-set kinds."""
    if kind in TWO_SET_KINDS:
        return ["p_low", "p_high"]
    return [f"p_{bin_name(b)}" for b in bins]


def bin_name(value: float) -> str:
    """A bin's column name: ``5`` for 5.0, ``2.5`` for 2.5."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def make_targets(counts: np.ndarray, bins: np.ndarray, settings: LabelSettings) -> Targets:
    """Targets of ``settings.kind`` for every row of ``counts`` (rows must have ``n >= 1``)."""
    bins = np.asarray(bins, dtype=np.float64)
    _, rsd, mu, var = moments(counts, bins)
    keep = np.ones(len(mu), dtype=bool)
    columns = target_columns(settings.kind, bins)
    error = None
    if settings.kind == "binary":
        t = default_threshold(bins) if settings.threshold is None else settings.threshold
        high = mu > t + settings.delta
        low = mu <= t - settings.delta
        keep = high | low
        c = high[keep].astype(np.float64)
        targets = np.stack([1.0 - c, c], axis=1)
    elif settings.kind == "soft":
        if bins[0] < 0 or bins[-1] <= 0:
            raise UiaaError(f"soft targets (mean / b_M) need a scale of non-negative scores, not "
                            f"{bins[0]:g}..{bins[-1]:g}")
        p_high = mu / bins[-1]
        targets = np.stack([1.0 - p_high, p_high], axis=1)
    elif settings.kind == "rsd":
        targets = rsd
    else:
        var_z = var if settings.kind == "gauss-nv" else np.minimum((1.0 - settings.lam) * var, settings.cap)
        targets = discretised_gaussian(mu, var_z, bins, settings.divisor)
        error = float(np.mean(np.abs((targets * bins).sum(axis=1) - mu))) if len(mu) else 0.0
    return Targets(keep=keep, targets=targets, columns=columns,
                   left_out_margin=int((~keep).sum()), reconstruction_error=error)


def read_id_list(path: str) -> np.ndarray:
    """Image ids, one per line (e.g. AVA's ``generic_test.jpgl``); blank lines and ``#`` comments ignored."""
    from uiaa_cli.tables import read_bytes

    text = read_bytes(path).decode(errors="replace")
    ids = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return np.array(ids, dtype=str)


def matches_ids(images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which images are in ``ids``, by their full name or their name without its extension."""
    stems = np.char.rpartition(images, ".")
    stems = np.where(stems[:, 1] == ".", stems[:, 0], images)
    return np.isin(images, ids) | np.isin(stems, ids)


@dataclass
class LabelReport:
    """What happened to the rows: counts, reasons for leaving rows out, the reconstruction error."""

    rows_in: int = 0
    rows_out: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    reconstruction_error: float | None = None  # mean |sum_m b_m p_m - mu| over rows out (Gaussian kinds)

    def merge(self, other: LabelReport) -> None:
        """Fold in the report of the next chunk."""
        if other.reconstruction_error is not None:
            total = (self.reconstruction_error or 0.0) * self.rows_out + other.reconstruction_error * other.rows_out
            self.reconstruction_error = total / max(self.rows_out + other.rows_out, 1)
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        for why, n in other.left_out.items():
            self.left_out[why] = self.left_out.get(why, 0) + n


def build_labels(images: np.ndarray, counts: np.ndarray, bins: np.ndarray, settings: LabelSettings, *,
                 min_votes: float = 0, only: np.ndarray | None = None,
                 exclude: np.ndarray | None = None) -> tuple[Table, LabelReport]:
    """The self-describing labels table: image, votes, mean, std, the RSD per bin, the targets."""
    bins = np.asarray(bins, dtype=np.float64)
    n = counts.sum(axis=1)
    keep = np.ones(len(images), dtype=bool)
    left_out: dict[str, int] = {}

    def drop(mask: np.ndarray, why: str) -> None:
        nonlocal keep
        gone = keep & mask
        if gone.any():
            left_out[why] = int(gone.sum())
        keep &= ~mask

    if only is not None:
        drop(~matches_ids(images, only), "not in --only")
    if exclude is not None:
        drop(matches_ids(images, exclude), "in --exclude")
    if min_votes > 0:
        drop(n < min_votes, f"fewer than {min_votes:g} votes")
    images, counts, n = images[keep], counts[keep], n[keep]
    targets = make_targets(counts, bins, settings)
    if targets.left_out_margin:
        left_out["inside the binary margin"] = targets.left_out_margin
    images, counts, n = images[targets.keep], counts[targets.keep], n[targets.keep]
    _, rsd, mu, var = moments(counts, bins) if len(n) else (n, counts, n, n)
    votes = n.astype(np.int64) if np.all(n == np.round(n)) else n
    columns: dict[str, np.ndarray] = {"image": images, "votes": votes, "mean": mu, "std": np.sqrt(var)}
    for j, b in enumerate(bins):
        columns[bin_name(b)] = rsd[:, j]
    for j, name in enumerate(targets.columns):
        columns[name] = targets.targets[:, j]
    attrs = {"uiaa": "labels", "kind": settings.kind, "bins": [float(b) for b in bins],
             "threshold": settings.threshold if settings.threshold is not None else default_threshold(bins)}
    if settings.kind == "gauss-mv":
        attrs.update(lam=settings.lam, cap=settings.cap)
    if settings.kind in ("gauss-nv", "gauss-mv"):
        attrs["divisor"] = settings.divisor
    if settings.kind == "binary":
        attrs["delta"] = settings.delta
    report = LabelReport(len(keep), len(images), left_out, targets.reconstruction_error)
    return Table(columns, attrs), report


def table_bins(table: Table) -> np.ndarray:
    """The scale of a labels table: its ``bins`` attribute, else the columns named by a number."""
    if "bins" in table.attrs:
        return np.asarray(table.attrs["bins"], dtype=np.float64)
    values = []
    for name in table.names:
        try:
            values.append(float(name))
        except ValueError:
            continue
    return np.array(values, dtype=np.float64)


def rsd_columns(table: Table) -> list[str]:
    """Names of the RSD columns (one per bin, named by the bin's value)."""
    return [bin_name(b) for b in table_bins(table)]


def probability_columns(table: Table) -> list[str]:
    """Target (labels) or predicted (predictions) columns: ``p_low, p_high`` or ``p_<bin>`` in order."""
    return [n for n in table.names if n.startswith("p_")]


def table_kind(table: Table) -> str:
    """The kind of a labels table's targets: its ``kind`` attribute (Parquet, HDF5), else read from
    the columns and values, as a plain CSV has no attributes.

    Targets ``p_low, p_high`` are ``binary`` when every ``p_high`` is 0 or 1, else ``soft``. Per-bin
    targets are ``rsd`` when they equal the vote shares (the bin columns); else a Gaussian kind,
    told by its spread: ``gauss-nv`` when the targets are as wide as the votes (median variance
    ratio above 0.75), ``gauss-mv`` when narrower (``var_z = min((1 - lam) var, cap)``). That is a
    reading, not a record: ``--divisor var`` halves the spread too, and ``lam``/``cap`` are unknown.
    """
    if table.attrs.get("kind"):
        return str(table.attrs["kind"])
    targets = probability_columns(table)
    if targets == ["p_low", "p_high"]:
        high = table.matrix(["p_high"])[:, 0]
        return "binary" if np.all((high == 0) | (high == 1)) else "soft"
    rsd = rsd_columns(table)
    if len(rsd) == len(targets) and all(n in table for n in rsd) and \
            np.allclose(table.matrix(rsd), table.matrix(targets), rtol=0, atol=1e-12):
        return "rsd"
    bins = table_bins(table)
    if len(bins) != len(targets) or "std" not in table:
        return "gauss-mv"  # the default kind
    p = table.matrix(targets)
    centre = p @ bins
    spread = np.einsum("nm,nm->n", p, (bins[None, :] - centre[:, None]) ** 2)
    votes = table.matrix(["std"])[:, 0] ** 2
    wide = votes > 0
    ratio = np.median(spread[wide] / votes[wide]) if wide.any() else 0.0
    return "gauss-nv" if ratio > 0.75 else "gauss-mv"


def table_threshold(table: Table, bins: np.ndarray) -> float:
    """The binary threshold a labels table was made with: its attribute (Parquet, HDF5), else the
    scale's default ``b_ceil(M/2)`` (a plain CSV does not record a ``--threshold``)."""
    t = table.attrs.get("threshold")
    return float(t) if t is not None else default_threshold(bins)
