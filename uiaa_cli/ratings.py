"""Rating sources to vote counts: AVA.txt, counts tables, KonIQ-style fractions, long tables of votes.

Every parser returns :class:`Ratings` — image ids, a ``(N, M)`` counts matrix, the bin values and the
source line of each row (for error messages) — and works on whole columns at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables import Table, parse_delimited, read_bytes

SOURCE_FORMATS = ("ava", "counts", "koniq", "long")
AVA_FIELDS = 15  # index, image id, c1..c10, tag, tag, challenge
IMAGE_COLUMN_NAMES = ("image", "image_id", "image_name", "img", "id", "name", "filename", "file")
TOTAL_COLUMN_NAMES = ("c_total", "total", "votes", "n", "num_votes", "count")
SCORE_COLUMN_NAMES = ("score", "rating", "vote")


@dataclass
class Ratings:
    images: np.ndarray  # str, (N,)
    counts: np.ndarray  # float64, (N, M)
    bins: np.ndarray  # float64, (M,)
    lines: np.ndarray  # int, (N,) source line of each row
    source_format: str


def parse_scale(text: str) -> np.ndarray:
    """``1..10`` or ``0..4`` (step 1) or a comma list ``1,2,3,4,5`` (strictly increasing)."""
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = (float(p) for p in text.split(".."))
            bins = np.arange(lo, hi + 0.5, 1.0)
        else:
            bins = np.array([float(p) for p in text.split(",")])
    except ValueError:
        raise UiaaError(f"--scale {text!r}: expected LO..HI (e.g. 1..10) or a comma list (e.g. 1,2,3,4,5)") from None
    if len(bins) < 2 or np.any(np.diff(bins) <= 0) or not np.all(np.isfinite(bins)):
        raise UiaaError(f"--scale {text!r}: needs at least two strictly increasing values")
    return bins


def read_ratings(path: str, source_format: str | None = None, scale: str | None = None,
                 allow_zero_votes: bool = False) -> Ratings:
    """Detect the format of ``path`` (``-``: stdin) and parse it into counts."""
    data = read_bytes(path)
    if not data.strip():
        raise UiaaError("empty input: no ratings", where=at(path))
    fmt = source_format or detect_format(data)
    if fmt not in SOURCE_FORMATS:
        raise UiaaError(f"unknown ratings format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
    bins = parse_scale(scale) if scale else None
    if fmt == "ava":
        ratings = parse_ava(data, path)
        if bins is not None:
            ratings.bins = check_bins(bins, ratings.counts.shape[1], path)
    else:
        table = parse_delimited(data, path)
        if fmt == "long":
            ratings = parse_long(table, path, bins)
        else:
            ratings = parse_counts(table, path, bins, koniq=fmt == "koniq")
    check_ratings(ratings, path, allow_zero_votes)
    return ratings


def detect_format(data: bytes) -> str:
    """AVA if the first line is whitespace-separated integers; else a table judged by its header."""
    first = data.lstrip().partition(b"\n")[0].strip()
    tokens = first.split()
    plain = b"," not in first and b"\t" not in first
    if tokens and all(t.lstrip(b"-").isdigit() for t in tokens) and (plain or len(tokens) == AVA_FIELDS):
        return "ava"
    header = first.decode(errors="replace").lower()
    names = [n.strip().strip('"') for n in re.split(r"[,\t]", header)]
    if any(n in TOTAL_COLUMN_NAMES for n in names) and len(_count_columns(names)) >= 2:
        return "koniq"
    if len(names) == 2 and names[1] in SCORE_COLUMN_NAMES:
        return "long"
    return "counts"


def parse_ava(data: bytes, path: str) -> Ratings:
    """AVA.txt: ``index id c1..c10 tag tag challenge`` per line, whitespace-separated."""
    buf = np.frombuffer(data, dtype=np.uint8)
    is_space = (buf == 32) | (buf == 9) | (buf == 13) | (buf == 10) | (buf == 11) | (buf == 12)
    newline = buf == 10
    line_of_byte = np.cumsum(newline) - newline + 1  # 1-based line of each byte
    starts = np.flatnonzero(~is_space & np.concatenate(([True], is_space[:-1])))
    token_line = line_of_byte[starts]
    lines, per_line = np.unique(token_line, return_counts=True)
    bad = np.flatnonzero(per_line != AVA_FIELDS)
    if len(bad):
        i = bad[0]
        raise UiaaError(
            f"AVA line has {per_line[i]} fields, expected {AVA_FIELDS} (index, id, 10 counts, 2 tags, challenge)",
            where=at(path, int(lines[i])),
        )
    values = _parse_ints(data, len(starts), starts, token_line, path).reshape(-1, AVA_FIELDS)
    ends = np.append(starts[1:], len(buf))
    id_start = starts[1::AVA_FIELDS]
    id_len = ends[1::AVA_FIELDS] - id_start - _trailing_space(is_space, ends[1::AVA_FIELDS], id_start)
    images = values[:, 1].astype(str)
    if np.any(np.char.str_len(images) != id_len):  # ids with leading zeros or signs: keep the text
        images = np.array([data[s:s + n].decode() for s, n in zip(id_start, id_len)], dtype=str)
    return Ratings(images, values[:, 2:12].astype(np.float64), np.arange(1.0, 11.0), lines, "ava")


def _trailing_space(is_space: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Whitespace bytes between the end of each token and the start of the next."""
    csum = np.concatenate(([0], np.cumsum(is_space)))
    return csum[ends] - csum[starts]


def _parse_ints(data: bytes, expected: int, starts: np.ndarray, token_line: np.ndarray, path: str) -> np.ndarray:
    """All whitespace-separated integers in C; on a bad token, name its line."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.fromstring(data, dtype=np.int64, sep=" ")
    if len(values) != expected:
        bad_token = len(values)
        start = starts[bad_token]
        token = data[start:].split(None, 1)[0].decode(errors="replace")
        raise UiaaError(f"not a whole number: {token!r}", where=at(path, int(token_line[bad_token])))
    # fromstring accepts '12abc' as 12 followed by garbage only at the end; the count check covers that
    return values


def _count_columns(names: list[str]) -> list[int]:
    """Indices of the columns that hold per-score counts: ``c1``, ``score_3``, ``5`` and so on."""
    out = []
    for i, name in enumerate(names):
        if name.lower() in TOTAL_COLUMN_NAMES:
            continue
        if re.fullmatch(r"(c|count|counts|score|vote|votes|rating|bin|n)?[_ ]?-?\d+(\.\d+)?", name.strip().lower()):
            out.append(i)
    return out


def _bin_value(name: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?$", name.strip()).group(0))


def _image_column(table: Table, path: str) -> str:
    for name in table.names:
        if name.lower() in IMAGE_COLUMN_NAMES:
            return name
    first = table.names[0]
    if table[first].dtype.kind == "U":
        return first
    raise UiaaError(f"no image column (expected one of: {', '.join(IMAGE_COLUMN_NAMES)})", where=at(path, 1))


def _numeric(table: Table, name: str, path: str) -> np.ndarray:
    values = table[name]
    if values.dtype.kind == "U":
        row = next(i for i, v in enumerate(values) if not _is_number(v))  # error path only
        raise UiaaError(f"column {name!r}: not a number: {values[row]!r}", where=at(path, row + 2))
    values = values.astype(np.float64)
    nan = np.flatnonzero(~np.isfinite(values))
    if len(nan):
        raise UiaaError(f"column {name!r}: missing or non-finite value", where=at(path, int(nan[0]) + 2))
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_bins(bins: np.ndarray, m: int, path: str) -> np.ndarray:
    if len(bins) != m:
        raise UiaaError(f"--scale has {len(bins)} values but the ratings have {m} score columns", where=at(path))
    return bins


def parse_counts(table: Table, path: str, bins: np.ndarray | None, koniq: bool = False) -> Ratings:
    """A counts table (image + a count column per score) or KonIQ-style fractions with a total."""
    image = _image_column(table, path)
    names = [n for n in table.names if n != image]
    count_idx = _count_columns(names)
    count_names = [names[i] for i in count_idx]
    if len(count_names) < 2:
        raise UiaaError(
            "no score columns found: expected one count column per score, e.g. 1,2,...,10 or c1..c5",
            where=at(path, 1),
        )
    counts = np.stack([_numeric(table, n, path) for n in count_names], axis=1)
    if koniq:
        total_name = next(n for n in names if n.lower() in TOTAL_COLUMN_NAMES)
        total = _numeric(table, total_name, path)
        sums = counts.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
        if len(off):
            raise UiaaError(f"fractions sum to {sums[off[0]]:.4f}, not 1", where=at(path, int(off[0]) + 2))
        counts = np.round(counts * total[:, None])
    if bins is None:
        try:
            bins = np.array([_bin_value(n) for n in count_names])
        except AttributeError:
            raise UiaaError("cannot infer the scale from the column names; pass --scale", where=at(path, 1)) from None
        if np.any(np.diff(bins) <= 0):
            raise UiaaError(
                f"score columns {', '.join(count_names)} are not in increasing order; pass --scale",
                where=at(path, 1),
            )
    bins = check_bins(bins, counts.shape[1], path)
    lines = np.arange(len(table)) + 2
    return Ratings(table[image].astype(str), counts, bins.astype(np.float64), lines, "koniq" if koniq else "counts")


def parse_long(table: Table, path: str, bins: np.ndarray | None) -> Ratings:
    """A long table of single votes (``image, score``), aggregated per image in order of first vote."""
    image_name, score_name = table.names[:2]
    images = table[image_name].astype(str)
    scores = _numeric(table, score_name, path)
    if bins is None:
        bins = infer_scale(scores, path)
    bin_index = np.searchsorted(bins, scores)
    bin_index = np.clip(bin_index, 0, len(bins) - 1)
    off = np.flatnonzero(bins[bin_index] != scores)
    if len(off):
        raise UiaaError(
            f"score {scores[off[0]]:g} is not on the scale {bins[0]:g}..{bins[-1]:g}", where=at(path, int(off[0]) + 2)
        )
    unique, first, inverse = np.unique(images, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    flat = np.bincount(rank[inverse] * len(bins) + bin_index, minlength=len(unique) * len(bins))
    counts = flat.reshape(len(unique), len(bins)).astype(np.float64)
    return Ratings(unique[order], counts, bins, first[order] + 2, "long")


def infer_scale(scores: np.ndarray, path: str) -> np.ndarray:
    """1..5 or 1..10 (or 0..10) from whole-number votes; anything else needs --scale."""
    if len(scores) and np.all(scores == np.round(scores)):
        lo, hi = scores.min(), scores.max()
        for a, b in ((1, 5), (1, 10), (0, 10)):
            if lo >= a and hi <= b:
                return np.arange(float(a), b + 1.0)
    raise UiaaError("unknown scale: votes are not whole numbers in 1..5 or 1..10; pass --scale", where=at(path))


def check_ratings(r: Ratings, path: str, allow_zero_votes: bool = False) -> None:
    """Counts finite and non-negative, at least one vote per image; image ids unique and non-empty."""
    bad = np.flatnonzero(np.any(r.counts < 0, axis=1) | ~np.all(np.isfinite(r.counts), axis=1))
    if len(bad):
        i = int(bad[0])
        raise UiaaError(f"image {r.images[i]}: negative or non-finite vote count", where=at(path, int(r.lines[i])))
    if not allow_zero_votes:
        zero = np.flatnonzero(r.counts.sum(axis=1) == 0)
        if len(zero):
            i = int(zero[0])
            raise UiaaError(f"image {r.images[i]} has no votes (--min-votes 1 leaves such images out)",
                            where=at(path, int(r.lines[i])))
    empty = np.flatnonzero(np.char.str_len(np.char.strip(r.images)) == 0)
    if len(empty):
        raise UiaaError("empty image name", where=at(path, int(r.lines[empty[0]])))
    unique, first, counts = np.unique(r.images, return_index=True, return_counts=True)
    dup = np.flatnonzero(counts > 1)
    if len(dup):
        name = unique[dup[0]]
        lines = r.lines[np.flatnonzero(r.images == name)[:2]]
        raise UiaaError(f"image {name} appears more than once (lines {lines[0]} and {lines[1]})", where=at(path))
