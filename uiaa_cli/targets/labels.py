"""Vote counts to training targets: the unified probabilistic formulation, in pure numpy.

Every function takes a counts matrix ``(N, M)`` and the ordered bin values ``(M,)`` and works on
all rows at once. docs/maths.md has the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables.table import Table

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
    # Gaussian kinds: the variance of an image with a single vote (a photographer's own star), whose
    # votes have none; 0 keeps the one-hot (see RATER_VARIANCE).
    rater_var: float = 0.0

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
        if not (self.rater_var >= 0 and np.isfinite(self.rater_var)):
            raise ValueError(f"--rater-var must be a finite number >= 0, got {self.rater_var}")


    def parameters(self, bins: np.ndarray) -> dict[str, float | str]:
        """The parameters that shape this kind's targets (recorded in tables and checkpoints)."""
        params: dict[str, float | str] = {
            "threshold": self.threshold if self.threshold is not None else default_threshold(bins)}
        if self.kind == "gauss-mv":
            params.update(lam=self.lam, cap=self.cap)
        if self.kind in ("gauss-nv", "gauss-mv"):
            params["divisor"] = self.divisor
            if self.rater_var:
                params["rater_var"] = self.rater_var
        if self.kind == "binary":
            params["delta"] = self.delta
        return params


# One rater's variance, in stars^2, for ``labels --format xmp``: a photographer's single star has
# no spread of votes, and a one-hot target would punish the neighbouring star as hard as the far
# end of the scale. With variance 1 (one star of standard deviation, the spread of re-rating the
# same photo a star either way), gauss-nv gives a neighbour exp(-1/2) = 0.61 of the vote's weight,
# two stars away 0.14; gauss-mv (lam 0.5) halves the variance: 0.37 and 0.02. A choice, not a
# measurement: --rater-var sets it.
RATER_VARIANCE = 1.0


def default_threshold(bins: np.ndarray) -> float:
    """``b_ceil(M/2)``: 5 on 1..10, 3 on 1..5."""
    m = len(bins)
    return float(bins[(m + 1) // 2 - 1])


def moments(counts: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Votes ``n``, RSD ``y``, mean ``mu`` and population variance ``var`` of each row.

    The mean is ``sum(b c) / sum(c)`` and the variance ``(n sum(b^2 c) - sum(b c)^2) / n^2``, each one
    division of exact sums, so both are the correctly rounded values: an image whose votes average
    exactly 5 has mean 5.0, never 5.000000000000001 (which would make it *high* at threshold 5).
    """
    counts = np.asarray(counts, dtype=np.float64)
    bins = np.asarray(bins, dtype=np.float64)
    n = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # n = 0 rows are refused or dropped upstream
        rsd = counts / n[:, None]
    mu, var = exact_mean_var(counts, bins)
    return n, rsd, mu, var


def exact_mean_var(counts: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance of each row of ``counts`` over ``bins``, correctly rounded.

    Every finite float is ``k / 2^e``: counts and bins are scaled by powers of two to integers, the
    sums are taken in int64 when they provably fit (the usual case: whole counts, whole bins), else
    in Python integers, and each result is one division of two exact integers.
    """
    counts = np.asarray(counts, dtype=np.float64)
    bins = np.asarray(bins, dtype=np.float64)
    if not counts.size:
        return np.zeros(len(counts)), np.zeros(len(counts))
    kc, kb = _dyadic_exponent(counts), _dyadic_exponent(bins)
    c, b = np.ldexp(counts, kc), np.ldexp(bins, kb)  # exact: a power-of-two scaling
    n_max = float(np.abs(c).sum(axis=1).max())
    b_max = max(float(np.abs(b).max()), 1.0)
    # |n Q| and S^2 are at most (n_max b_max)^2: below 2^62 the int64 sums cannot overflow
    if kc <= 60 and kb <= 60 and n_max * b_max < 2.0**31 and n_max < 2.0**62:
        ci, bi = c.astype(np.int64), b.astype(np.int64)
        n = ci.sum(axis=1)
        s = ci @ bi
        q = ci @ (bi * bi)
        num = n * q - s * s
        den = n * n
        if n_max * b_max < 2.0**26:  # every integer below 2^53: float division is correctly rounded
            with np.errstate(divide="ignore", invalid="ignore"):
                mean, var = s / n, num / den
        else:  # Python's int / int is correctly rounded at any size
            mean, var = _divide(s.astype(object), n.astype(object)), _divide(num.astype(object),
                                                                               den.astype(object))
    else:
        ci = np.array([[int(x) for x in row] for row in c.tolist()], dtype=object)
        bi = np.array([int(x) for x in b.tolist()], dtype=object)
        n = ci.sum(axis=1)
        s = ci.dot(bi)
        q = ci.dot(bi * bi)
        mean, var = _divide(s, n), _divide(n * q - s * s, n * n)
    return np.ldexp(mean, -kb), np.maximum(np.ldexp(var, -2 * kb), 0.0)


def _dyadic_exponent(values: np.ndarray) -> int:
    """The least ``k`` for which every ``values * 2^k`` is a whole number (0 for whole numbers)."""
    finite = values[np.isfinite(values)]
    if not np.all(finite == np.round(finite)):
        mantissa, exponent = np.frexp(finite)
        nonzero = mantissa != 0
        # mantissa * 2^53 is a whole number, so values * 2^(53 - exponent) are too; trim trailing zeros
        whole = (mantissa[nonzero] * 2.0**53).astype(np.int64)
        trailing = _trailing_zeros(whole)
        return int(max(0, np.max(53 - exponent[nonzero] - trailing)))
    return 0


def _trailing_zeros(x: np.ndarray) -> np.ndarray:
    low = (x & -x).astype(np.float64)  # the lowest set bit, a power of two
    return np.frexp(low)[1].astype(np.int64) - 1


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Correctly rounded ``num / den`` of arrays of Python integers (NaN where ``den`` is 0)."""
    return np.array([a / b if b else float("nan") for a, b in zip(num.tolist(), den.tolist())], dtype=np.float64)


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
        if settings.rater_var:
            n = np.asarray(counts, dtype=np.float64).sum(axis=1)
            var = np.where(n == 1, settings.rater_var, var)
        var_z = var if settings.kind == "gauss-nv" else np.minimum((1.0 - settings.lam) * var, settings.cap)
        targets = discretised_gaussian(mu, var_z, bins, settings.divisor)
        error = float(np.mean(np.abs((targets * bins).sum(axis=1) - mu))) if len(mu) else 0.0
    return Targets(keep=keep, targets=targets, columns=columns,
                   left_out_margin=int((~keep).sum()), reconstruction_error=error)


ID_COLUMNS = ("image", "image_a", "image_b")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_id_list(path: str) -> np.ndarray:
    """The image ids of an ``--only``/``--exclude`` file, in any of these shapes:

    - a plain list, one id per line (AVA's ``generic_test.jpgl``); blank lines and ``#`` comments are
      ignored, as is anything after the first word; CRLF line ends and a byte-order mark are fine;
    - a table (CSV/TSV) with an ``image`` column, such as a labels or predictions table;
    - a table with ``image_a, image_b`` columns (``uiaa dedupe``'s pairs): the ids of both;
    - an HDF5 table or cache with such columns.
    """
    from uiaa_cli.errors import at
    from uiaa_cli.tables.table import is_hdf5, parse_delimited, read_bytes, read_table

    if path != "-" and is_hdf5(path):
        table = read_table(path)
        columns = [table[c].astype(str) for c in ID_COLUMNS if c in table]
        if not columns:
            raise UiaaError(f"no image ids: the table has no {' or '.join(ID_COLUMNS)} column", where=at(path))
        return np.concatenate(columns)
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode(errors="replace")
    first = next((line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    header = [h.strip().strip('"') for h in first.replace("\t", ",").split(",")]
    if any(h in ID_COLUMNS for h in header) and (len(header) > 1 or header == ["image"]):
        table = parse_delimited(data, path)
        columns = [table[c].astype(str) for c in ID_COLUMNS if c in table]
        ids = np.concatenate(columns) if columns else np.array([], dtype=str)
    else:
        lines = np.array(text.replace("\t", " ").splitlines() or [""], dtype=str)
        lines = np.char.strip(lines)
        lines = lines[(lines != "") & ~np.char.startswith(lines, "#")]
        ids = np.char.partition(lines, " ")[:, 0] if len(lines) else lines
    ids = ids[np.char.str_len(np.char.strip(ids)) > 0] if len(ids) else ids
    if not len(ids):
        raise UiaaError("no image ids in this list", where=at(path))
    return ids


def image_stems(names: np.ndarray) -> np.ndarray:
    """Names without an image extension: ``953619`` for ``953619.jpg``; other names unchanged."""
    parts = np.char.rpartition(names, ".")
    is_image = np.isin(np.char.lower(np.char.add(".", parts[:, 2])), IMAGE_EXTENSIONS) & (parts[:, 1] == ".")
    return np.where(is_image, parts[:, 0], names)


def matches_ids(images: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which images are in ``ids``: by the full name, or by the name without its image extension on
    either side (a list of ``953619.jpg`` names matches bare AVA ids, and the other way round)."""
    images, ids = np.asarray(images, dtype=str), np.asarray(ids, dtype=str)
    return np.isin(images, ids) | np.isin(image_stems(images), image_stems(ids))


def check_label_values(table: Table, path: str) -> None:
    """Refuse a labels table whose numbers cannot be ground truth or targets (e.g. hand-edited):
    ``mean``, ``std``, ``votes``, the RSD and ``p_*`` columns must be finite numbers, the
    probabilities within [0, 1]. One line naming the file, the row and the image."""
    from uiaa_cli.errors import at

    names = [n for n in ("votes", "mean", "std") if n in table]
    names += [n for n in rsd_columns(table) if n in table] + probability_columns(table)
    for name in names:
        values = table[name]
        if not len(values):
            continue
        if values.dtype.kind not in "iufb":
            raise UiaaError(f"column {name!r} is not numeric (a value such as {str(values[0])!r})", where=at(path))
        values = values.astype(np.float64)
        probability = name.startswith("p_") or name in rsd_columns(table)
        with np.errstate(invalid="ignore"):
            if probability:
                bad = ~np.isfinite(values) | (values < -1e-12) | (values > 1 + 1e-9)
            else:  # mean on any scale; votes and std are never negative
                bad = ~np.isfinite(values) | ((values < 0) if name in ("votes", "std") else False)
        if bad.any():
            i = int(np.argmax(bad))
            image = f"image {table['image'][i]} " if "image" in table else ""
            what = ("a finite number in [0, 1]" if probability else "a finite number >= 0" if name != "mean"
                    else "a finite number")
            raise UiaaError(f"{image}(row {i + 1}): column {name!r} is {values[i]!r}, not {what}", where=at(path))


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
    attrs = {"uiaa": "labels", "kind": settings.kind, "bins": [float(b) for b in bins], **settings.parameters(bins)}
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
