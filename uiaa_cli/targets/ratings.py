"""Rating sources to vote counts: AVA.txt, counts tables, KonIQ-style fractions, long tables of
votes, and a photographer's XMP star ratings (a folder of photos or sidecars).

Every parser returns :class:`Ratings` — image ids, a ``(N, M)`` counts matrix, the bin values and the
source line of each row (for error messages) — and works on whole columns at once.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.formats import check_text, sniff
from uiaa_cli.tables.table import Table, read_table

SOURCE_FORMATS = ("ava", "counts", "koniq", "long", "xmp")
STAR_SCALE = np.arange(1.0, 6.0)  # XMP ratings: 1..5 stars
CHUNK_BYTES = 1 << 20  # ~21,000 AVA lines a chunk
AVA_FIELDS = 15  # index, image id, c1..c10, tag, tag, challenge
IMAGE_COLUMN_NAMES = ("image", "image_id", "image_name", "img", "id", "name", "filename", "file")
TOTAL_COLUMN_NAMES = ("c_total", "total", "votes", "n", "num_votes", "count")
SCORE_COLUMN_NAMES = ("score", "rating", "vote")
BOM = b"\xef\xbb\xbf"
# Vote counts from 2^53 up cannot all be told apart as float64 (and no data set has them): refused,
# as are AVA fields of more than 18 digits, which would overflow int64.
MAX_VOTES = 2.0**53
MAX_DIGITS = 18


@dataclass
class Ratings:
    images: np.ndarray  # str, (N,)
    counts: np.ndarray  # float64, (N, M)
    bins: np.ndarray  # float64, (M,)
    lines: np.ndarray  # int, (N,) source line of each row
    source_format: str
    notes: list[str] = field(default_factory=list)  # for the summary: what the source left out or changed
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, why) left out


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
    """All the ratings of ``path`` at once (see :func:`iter_ratings`)."""
    chunks = list(iter_ratings(path, source_format, scale, allow_zero_votes))
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return Ratings(np.concatenate([c.images for c in chunks]), np.concatenate([c.counts for c in chunks]),
                   first.bins, np.concatenate([c.lines for c in chunks]), first.source_format)


def iter_ratings(path: str, source_format: str | None = None, scale: str | None = None,
                 allow_zero_votes: bool = False, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Ratings]:
    """Detect the format of ``path`` (``-``: stdin) and yield its counts, checked, in chunks.

    AVA.txt streams in blocks of whole lines, so memory stays flat however long the file; the
    table formats are read whole (a long table of votes must be, to aggregate them per image).
    """
    if source_format == "xmp" or (source_format is None and path != "-" and os.path.isdir(path)):
        ratings = parse_xmp(path, scale)
        check_ratings(ratings, path, allow_zero_votes, SeenImages())
        yield ratings
        return
    stream = open_binary(path)
    try:
        first = stream.read(chunk_bytes)
        if first.startswith(BOM):  # UTF-8 byte-order mark (Windows editors): not part of the first line
            first = first[len(BOM):]
        if not first.strip():
            raise UiaaError("empty input: no ratings", where=at(path))
        table = None
        if sniff(first) != "text":  # a Parquet or HDF5 counts table: its columns say the format
            table = read_table(path, data=first + stream.read() if path == "-" else None)
            fmt = source_format or detect_format(",".join(table.names).encode())
        else:
            fmt = source_format or detect_format(first)
        if fmt not in SOURCE_FORMATS:
            raise UiaaError(f"unknown ratings format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
        bins = parse_scale(scale) if scale else None
        if fmt != "ava" or table is not None:
            if table is None:
                table = read_table(path, data=first + stream.read())
            if fmt == "long":
                ratings = parse_long(table, path, bins)
            else:
                ratings = parse_counts(table, path, bins, koniq=fmt == "koniq")
            check_ratings(ratings, path, allow_zero_votes, SeenImages())
            yield ratings
            return
        seen = SeenImages()
        line = 1
        for block in line_blocks(stream, first, chunk_bytes):
            check_text(block, path, line)  # ids that are not UTF-8: one line naming the line
            ratings = parse_ava(block, path, first_line=line)
            line += block.count(b"\n")
            if bins is not None:
                ratings.bins = check_bins(bins, ratings.counts.shape[1], path)
            check_ratings(ratings, path, allow_zero_votes, seen)
            yield ratings
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UiaaError("no such file", where=at(path)) from None
    except OSError as e:
        raise UiaaError(e.strerror or str(e), where=at(path)) from None


def line_blocks(stream: BinaryIO, first: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (the last may lack its newline); blank-only blocks are skipped."""
    pending = first
    while True:
        more = stream.read(chunk_bytes)
        if not more:
            if pending.strip():
                yield pending
            return
        pending += more
        cut = pending.rfind(b"\n") + 1
        if cut and pending[:cut].strip():
            yield pending[:cut]
            pending = pending[cut:]


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
    if any(n in SCORE_COLUMN_NAMES for n in names) and len(_count_columns(names)) < 2:
        return "long"
    return "counts"


def parse_ava(data: bytes, path: str, first_line: int = 1) -> Ratings:
    """AVA.txt: ``index id c1..c10 tag tag challenge`` per line, whitespace-separated."""
    buf = np.frombuffer(data, dtype=np.uint8)
    is_space = (buf == 32) | (buf == 9) | (buf == 13) | (buf == 10) | (buf == 11) | (buf == 12)
    newline = buf == 10
    line_of_byte = np.cumsum(newline, dtype=np.int64) - newline + first_line  # line of each byte
    starts = np.flatnonzero(~is_space & np.concatenate(([True], is_space[:-1])))
    token_line = line_of_byte[starts]
    per_line = np.bincount(token_line - first_line)
    lines = np.flatnonzero(per_line)
    bad = np.flatnonzero(per_line[lines] != AVA_FIELDS)
    lines = lines + first_line
    if len(bad):
        line = lines[bad[0]]
        raise UiaaError(
            f"AVA line has {per_line[line - first_line]} fields, expected {AVA_FIELDS} "
            "(index, id, 10 counts, 2 tags, challenge)",
            where=at(path, int(line)),
        )
    values = _parse_ints(data, buf, is_space, starts, token_line, line_of_byte, path).reshape(-1, AVA_FIELDS)
    ends = np.flatnonzero(~is_space & np.concatenate((is_space[1:], [True]))) + 1
    id_start = starts[1::AVA_FIELDS]
    id_len = ends[1::AVA_FIELDS] - id_start
    ids = values[:, 1]
    digits = np.floor(np.log10(np.maximum(np.abs(ids), 1))).astype(np.int64) + 1 + (ids < 0)
    images = ids.astype(str)
    if np.any(digits != id_len):  # ids with leading zeros or signs: keep the text
        images = np.array([data[s:s + n].decode() for s, n in zip(id_start, id_len)], dtype=str)
    return Ratings(images, values[:, 2:12].astype(np.float64), np.arange(1.0, 11.0), lines, "ava")


def _parse_ints(data: bytes, buf: np.ndarray, is_space: np.ndarray, starts: np.ndarray,
                token_line: np.ndarray, line_of_byte: np.ndarray, path: str) -> np.ndarray:
    """All whitespace-separated integers, parsed in C; a token that is not one names its line."""
    is_digit = (buf >= 48) & (buf <= 57)
    sign = (buf == 45) | (buf == 43)
    sign_ok = sign & np.concatenate(([True], is_space[:-1])) & np.concatenate((is_digit[1:], [False]))
    bad = np.flatnonzero(~is_space & ~is_digit & ~sign_ok)
    if len(bad):
        token_start = starts[np.searchsorted(starts, bad[0], side="right") - 1]
        token = data[token_start:].split(None, 1)[0].decode(errors="replace")
        raise UiaaError(f"not a whole number: {token!r}", where=at(path, int(line_of_byte[bad[0]])))
    ends = np.flatnonzero(~is_space & np.concatenate((is_space[1:], [True]))) + 1
    digits = ends - starts - sign_ok[starts]
    long_token = np.flatnonzero(digits > MAX_DIGITS)
    if len(long_token):
        start = starts[long_token[0]]
        token = data[start:ends[long_token[0]]].decode(errors="replace")
        raise UiaaError(f"number too large: {token!r}", where=at(path, int(line_of_byte[start])))
    values = np.fromstring(data, dtype=np.int64, sep=" ")
    if len(values) != len(starts):
        raise UiaaError("unreadable numbers", where=at(path))
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
        raise UiaaError(f"column {name!r}: not a number: {str(values[row])!r}", where=at(path, row + 2))
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
        total_name = next((n for n in names if n.lower() in TOTAL_COLUMN_NAMES), None)
        if total_name is None:
            raise UiaaError(f"not a KonIQ-style table: no column of vote totals (expected one of "
                            f"{', '.join(TOTAL_COLUMN_NAMES)}; has {', '.join(table.names)})", where=at(path, 1))
        total = _numeric(table, total_name, path)
        bad_total = np.flatnonzero((total != np.round(total)) | (total < 1) | (total > MAX_VOTES))
        if len(bad_total):
            i = int(bad_total[0])
            raise UiaaError(f"column {total_name!r}: {total[i]:g} is not a whole number of votes (1 or more)",
                            where=at(path, i + 2))
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
    """A long table of single votes (an image column and a ``score``, ``rating`` or ``vote`` column;
    others, such as a rater id, are ignored), aggregated per image in order of first vote."""
    image_name = _image_column(table, path)
    scores = [n for n in table.names if n.lower() in SCORE_COLUMN_NAMES]
    others = [n for n in table.names if n != image_name]
    if len(scores) != 1 and len(others) == 1:  # image plus one column: that column is the score
        scores = others
    if len(scores) != 1:
        raise UiaaError(f"not a long table of votes: expected an image column and one score column named "
                        f"{', '.join(SCORE_COLUMN_NAMES)} (has {', '.join(table.names)})", where=at(path, 1))
    score_name = scores[0]
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


def parse_xmp(folder: str, scale: str | None = None) -> Ratings:
    """A photographer's ratings (:func:`uiaa_cli.catalogue.xmp.catalogue_ratings`) as one vote each on
    1..5 stars: rejected (-1) is a vote for the lowest class, 1 star (the photographer would keep it
    least); unrated (0, or no rating) is no vote, and the photo is left out. A file whose metadata
    cannot be read is left out and listed in ``unreadable`` (a folder of photos holds the odd broken file)."""
    from uiaa_cli.catalogue.xmp import catalogue_ratings

    if not os.path.isdir(folder):
        raise UiaaError("--format xmp reads a folder of photos or XMP sidecars", where=at(folder))
    if scale is not None and not np.array_equal(parse_scale(scale), STAR_SCALE):
        raise UiaaError(f"--scale {scale}: XMP ratings are stars, 1..5", where=at(folder))
    names, ratings, failed = catalogue_ratings(folder)
    stars = np.array([0 if r is None else r for r in ratings], dtype=np.int64)
    rated = stars != 0
    if not rated.any():
        raise UiaaError(f"no rated photos ({len(names):,} photos or sidecars, none with 1..5 stars or rejected)",
                        where=at(folder))
    votes = np.maximum(stars[rated], 1)  # rejected: the lowest class
    counts = np.zeros((len(votes), len(STAR_SCALE)))
    counts[np.arange(len(votes)), votes - 1] = 1.0
    notes = []
    rejected = int((stars == -1).sum())
    if rejected:
        notes.append(f"{rejected:,} rejected (-1) counted as 1 star, the lowest class")
    if (~rated).any():
        notes.append(f"{int((~rated).sum()):,} unrated (0 or no rating) left out")
    if failed:
        notes.append(f"{len(failed):,} unreadable files left out")
    unreadable = [(os.path.join(folder, name), why) for name, why in failed]
    return Ratings(np.array(names, dtype=str)[rated], counts, STAR_SCALE.copy(), np.flatnonzero(rated) + 1, "xmp",
                   notes, unreadable)


def infer_scale(scores: np.ndarray, path: str) -> np.ndarray:
    """1..5 or 1..10 (or 0..10) from whole-number votes; anything else needs --scale."""
    if len(scores) and np.all(scores == np.round(scores)):
        lo, hi = scores.min(), scores.max()
        for a, b in ((1, 5), (1, 10), (0, 10)):
            if lo >= a and hi <= b:
                return np.arange(float(a), b + 1.0)
    raise UiaaError("unknown scale: votes are not whole numbers in 1..5 or 1..10; pass --scale", where=at(path))


class SeenImages:
    """Image ids met so far, to find duplicates across chunks.

    An id that is a plain number below 2^26 (AVA's and DPChallenge's, up to about 1e6) is a bit in a
    bitmap, so memory stays flat however many rows there are (128 KB for AVA). Any other id is a
    64-bit hash (8 bytes an image), kept in sorted runs whose sizes at least double from one to the
    next (merged like a binary counter), so each chunk costs a few binary searches, not a sort of
    everything so far. The two never meet: ``42`` is a number, ``042`` and ``42.jpg`` are hashed.
    """

    BITMAP_IDS = 1 << 26  # an 8 MB bitmap at most

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.bits = np.zeros(0, dtype=np.uint8)

    def add(self, images: np.ndarray) -> int | None:
        """Remember ``images``; the index of the first one already met (or repeated within), if any."""
        codes, length = id_codes(images)
        number = plain_numbers(codes, length, self.BITMAP_IDS)
        numbered = np.flatnonzero(number >= 0)
        hashed = np.flatnonzero(number < 0)
        values, h = number[numbered], hash_ids(codes[hashed], length[hashed])
        repeated = np.zeros(len(images), dtype=bool)
        repeated[numbered] = self._numbers_met(values)
        repeated[hashed] = self._hashes_met(h)
        if repeated.any():
            return int(np.argmax(repeated))
        if len(values):
            need = int(values.max()) // 8 + 1
            if need > len(self.bits):
                self.bits = np.concatenate((self.bits, np.zeros(max(need, 2 * len(self.bits)) - len(self.bits),
                                                                dtype=np.uint8)))
            np.bitwise_or.at(self.bits, values >> 3, (1 << (values & 7)).astype(np.uint8))
        run = np.sort(h)
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.sort(np.concatenate((self.runs.pop(), run)), kind="stable")
        if len(run):
            self.runs.append(run)
        return None

    def _numbers_met(self, values: np.ndarray) -> np.ndarray:
        """Which of ``values`` are in the bitmap, or repeat an earlier one of ``values``."""
        met = repeats_within(values)
        known = values >> 3 < len(self.bits)
        met[known] |= ((self.bits[values[known] >> 3] >> (values[known] & 7)) & 1).astype(bool)
        return met

    def _hashes_met(self, h: np.ndarray) -> np.ndarray:
        met = repeats_within(h)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, h), len(run) - 1)
            met |= run[at] == h
        return met


def repeats_within(values: np.ndarray) -> np.ndarray:
    """True at every value equal to an earlier one of ``values`` (the first of each stays False)."""
    order = np.argsort(values, kind="stable")
    repeated = np.zeros(len(values), dtype=bool)
    repeated[order[1:][values[order][1:] == values[order][:-1]]] = True
    return repeated


def plain_numbers(codes: np.ndarray, length: np.ndarray, limit: int) -> np.ndarray:
    """Each id's value if it is a plain number below ``limit`` (ASCII digits, no leading zero), else
    -1; the ids as :func:`id_codes` gives them."""
    digits = len(str(limit))
    value = np.zeros(len(length), dtype=np.int64)
    plain = (length >= 1) & (length <= digits)
    if codes.shape[1]:
        plain &= (length == 1) | (codes[:, 0] != ord("0"))
    for j in range(min(codes.shape[1], digits)):
        inside = j < length
        digit = codes[:, j].astype(np.int64) - ord("0")
        plain &= ~inside | ((digit >= 0) & (digit <= 9))
        value = np.where(inside, value * 10 + digit, value)
    return np.where(plain & (value < limit), value, -1)


def hash_ids(codes: np.ndarray, length: np.ndarray) -> np.ndarray:
    """FNV-1a over each id's code points (the ids as :func:`id_codes` gives them), vectorised over ids:
    a loop over positions, each id's own characters only, so an id hashes the same in arrays of any
    width."""
    h = np.full(len(length), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(codes.shape[1]):
            h = np.where(j < length, (h ^ codes[:, j].astype(np.uint64)) * np.uint64(0x100000001B3), h)
    return h


def id_codes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids as an ``(n, width)`` matrix of their code points (a view of numpy's UTF-32 strings,
    zero-padded to the widest) and each one's length."""
    text = np.ascontiguousarray(np.asarray(images, dtype=str))
    width = text.dtype.itemsize // 4
    return text.view(np.uint32).reshape(len(text), width), np.char.str_len(text)


def check_ratings(r: Ratings, path: str, allow_zero_votes: bool, seen: SeenImages) -> None:
    """Counts finite and non-negative, at least one vote per image; image ids unique and non-empty."""
    bad = np.flatnonzero(np.any(r.counts < 0, axis=1) | ~np.all(np.isfinite(r.counts), axis=1))
    if len(bad):
        i = int(bad[0])
        raise UiaaError(f"image {r.images[i]}: negative or non-finite vote count", where=at(path, int(r.lines[i])))
    with np.errstate(over="ignore"):  # a sum that overflows to inf is exactly what is refused here
        huge = np.flatnonzero(r.counts.sum(axis=1) >= MAX_VOTES)
    if len(huge):
        i = int(huge[0])
        raise UiaaError(f"image {r.images[i]}: vote counts too large (2^53 votes or more)",
                        where=at(path, int(r.lines[i])))
    if not allow_zero_votes:
        zero = np.flatnonzero(r.counts.sum(axis=1) == 0)
        if len(zero):
            i = int(zero[0])
            raise UiaaError(f"image {r.images[i]} has no votes (--min-votes 1 leaves such images out)",
                            where=at(path, int(r.lines[i])))
    empty = np.flatnonzero(np.char.str_len(np.char.strip(r.images)) == 0)
    if len(empty):
        raise UiaaError("empty image name", where=at(path, int(r.lines[empty[0]])))
    again = seen.add(r.images)
    if again is not None:
        raise UiaaError(f"image {r.images[again]} appears more than once (again at line {r.lines[again]})",
                        where=at(path))
