"""Culling: the shots of one moment (a burst, a few tries at one composition) in one group, and the
best of each group its pick.

Each photo is decoded once, at :data:`CULL_SIZE` px, for two measures:

- ``dedupe``'s perceptual hash and low-frequency coefficients (:mod:`uiaa_cli.pixels.dedupe`):
  frames of one burst differ by small shifts, exposure and blur, all of which leave the low
  frequencies nearly as they are, so their hashes are a few bits apart. ``dedupe``'s colour test is
  not used: a burst's exposure changes move every colour;
- sharpness: the variance of the Laplacian over the variance of the grey values (so an exposure
  change, which scales both, does not change it; a blurred frame loses most of its Laplacian).

Grouping (``--group``): ``hash``: photos joined by close hashes (within ``max_distance`` bits and
coefficients correlating at least ``min_similarity``), transitively; ``time``: photos whose EXIF
``DateTimeOriginal`` (with its sub-second field) follow each other within ``gap`` seconds;
``both`` (the default): close hashes within one run of time, so two scenes that look alike but were
shot apart never share a group (a photo without a capture time joins by its hash alone).

The pick of a group is its best score among its sharp frames: a frame whose sharpness is below
``blur_ratio`` (default 0.5) of the group's sharpest is never the pick, so a blurred frame that
the model happens to like does not win its burst.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels import dedupe

CULL_SIZE = 512  # px: blur of a few pixels at 512 is what shows on a screen
GROUPINGS = ("both", "hash", "time")
BURST_DISTANCE = 16  # bits of 63: each planted burst frame (shift, exposure, blur) is within 14 of another
BURST_SIMILARITY = 0.7  # planted frames: >= 0.78 to another of their burst; distinct scenes <= 0.59
BURST_GAP = 2.0  # seconds between two frames of one burst
BLUR_RATIO = 0.5


@dataclass
class Measured:
    """Per photo: hash features, sharpness (NaN where it could not be decoded), capture time (NaN if
    unknown), and the (position, reason) of each that could not be decoded."""

    features: dedupe.Features
    sharpness: np.ndarray
    times: np.ndarray
    failed: list[tuple[int, str]]


def sharpness(pixels: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian over the variance of the grey values, per image of
    ``(B, H, W, 3)`` uint8."""
    grey = np.asarray(pixels, dtype=np.float32) @ dedupe.LUMA
    lap = 4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
    spread = grey.reshape(len(grey), -1).var(axis=1)
    return lap.reshape(len(lap), -1).var(axis=1) / np.maximum(spread, 1e-6)


def _measure_paths(paths: list[str], with_time: bool) -> tuple[dedupe.Features, np.ndarray, np.ndarray,
                                                               list[tuple[int, str]]]:
    """One worker's share: decode, hash, sharpness and capture time of each path."""
    from uiaa_cli.pixels.images import decode_image
    from uiaa_cli.pixels.photo import capture_time

    pixels = np.zeros((len(paths), CULL_SIZE, CULL_SIZE, 3), dtype=np.uint8)
    times = np.full(len(paths), np.nan)
    failed: list[tuple[int, str]] = []
    for k, path in enumerate(paths):
        try:
            pixels[k] = decode_image(path, CULL_SIZE)
        except UiaaError as e:
            failed.append((k, e.message))
            continue
        except Exception as e:  # noqa: BLE001 - one bad photo never stops the run
            failed.append((k, f"unexpected {type(e).__name__}: {e}"))
            continue
        if with_time:
            when = capture_time(path)
            times[k] = np.nan if when is None else when
    sharp = sharpness(pixels)
    sharp[[k for k, _ in failed]] = np.nan
    return dedupe.features(pixels), sharp, times, failed


def _init_worker() -> None:
    os.environ["UIAA_RESIZE"] = "pillow"  # decoding never imports torch here


def measure(paths: Sequence[str], with_time: bool = True, workers: int | None = None, chunk: int = 16) -> Measured:
    """Hash features, sharpness and capture times of ``paths``, decoded by ``workers`` processes."""
    from uiaa_cli.pixels.workers import available_cores, start_pool

    paths = [str(p) for p in paths]
    n = len(paths)
    out = dedupe.Features.empty(n)
    sharp, times = np.full(n, np.nan), np.full(n, np.nan)
    failed: list[tuple[int, str]] = []
    starts = range(0, n, chunk)
    workers = available_cores() if workers is None else workers
    if workers <= 1 or n <= chunk:
        _init_worker()
        done = (_measure_paths(paths[s:s + chunk], with_time) for s in starts)
        results = list(done)
    else:
        with start_pool(workers, _init_worker) as pool:
            results = list(pool.map(_measure_paths, (paths[s:s + chunk] for s in starts),
                                    [with_time] * len(starts)))
    for start, (features, s, t, bad) in zip(starts, results, strict=True):
        rows = slice(start, start + len(s))
        out.put(rows, features)
        sharp[rows], times[rows] = s, t
        failed += [(start + k, why) for k, why in bad]
    return Measured(out, sharp, times, failed)


def time_runs(times: np.ndarray, gap: float = BURST_GAP) -> np.ndarray:
    """A run number per photo: photos whose capture times follow each other within ``gap`` seconds
    share one; -1 where the time is unknown."""
    runs = np.full(len(times), -1, dtype=np.int64)
    known = np.flatnonzero(np.isfinite(times))
    if not len(known):
        return runs
    order = known[np.argsort(times[known], kind="stable")]
    starts = np.concatenate(([True], np.diff(times[order]) > gap))
    runs[order] = np.cumsum(starts) - 1
    return runs


def groups(measured: Measured, grouping: str = "both", gap: float = BURST_GAP,
           max_distance: int = BURST_DISTANCE, min_similarity: float = BURST_SIMILARITY) -> np.ndarray:
    """A group number (1, 2, ... in order of each group's first photo) per photo; a photo that could
    not be decoded is a group of its own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if grouping not in GROUPINGS:
        raise UiaaError(f"--group {grouping!r}: choose one of {', '.join(GROUPINGS)}")
    n = len(measured.sharpness)
    if not n:
        return np.zeros(0, dtype=np.int64)
    good = np.isfinite(measured.sharpness)
    runs = time_runs(measured.times, gap)
    if grouping == "time":
        i, j = _consecutive_in_runs(runs)
    else:
        i, j, _ = dedupe.close_hashes(measured.features.hashes, None, max_distance)
        similar = dedupe.similarity(measured.features.vectors[i], measured.features.vectors[j]) >= min_similarity
        i, j = i[similar], j[similar]
        if grouping == "both":
            timed = (runs[i] >= 0) & (runs[j] >= 0)
            keep = ~timed | (runs[i] == runs[j])
            i, j = i[keep], j[keep]
    keep = good[i] & good[j]
    i, j = i[keep], j[keep]
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # number the groups by their first photo
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse] + 1


def _consecutive_in_runs(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of photos that share a run (each joined to the run's first photo)."""
    timed = np.flatnonzero(runs >= 0)
    if not len(timed):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first = np.unique(runs[timed], return_index=True)
    head = np.empty(runs.max() + 1, dtype=np.int64)
    head[runs[timed[first]]] = timed[first]
    return head[runs[timed]], timed


def picks(group: np.ndarray, scores: np.ndarray, sharp: np.ndarray, blur_ratio: float = BLUR_RATIO) -> np.ndarray:
    """True for the pick of each group: the best score among the frames at least ``blur_ratio`` as
    sharp as the group's sharpest (ties: the sharper, then the first)."""
    group = np.asarray(group)
    n = len(group)
    pick = np.zeros(n, dtype=bool)
    if not n:
        return pick
    sharp = np.where(np.isfinite(sharp), sharp, -np.inf)  # an undecodable frame is the least sharp
    best_sharp = np.full(group.max() + 1, -np.inf)
    np.maximum.at(best_sharp, group, sharp)
    eligible = (sharp >= blur_ratio * best_sharp[group]) | ~np.isfinite(best_sharp[group])
    # order by group, then eligible first, best score, sharpest, position; the first of each group wins
    order = np.lexsort((np.arange(n), -sharp, -np.asarray(scores, dtype=np.float64), ~eligible, group))
    first = np.concatenate(([True], group[order][1:] != group[order][:-1]))
    pick[order[first]] = True
    return pick
