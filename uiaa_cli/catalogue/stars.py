"""Scores to stars: by rank within the collection, or by fixed score cut-offs.

- ``top:5%,15%,30%,30%,20%`` (the default): the best 5 % of the photos get 5 stars, the next 15 %
  4, then 30 % 3, 30 % 2 and the last 20 % 1. A model's scores say which photo is better, not
  how good it is on an absolute scale (a model trained on AVA scores most photos 4..6), so a rank
  is what transfers from one shoot to the next; the shares follow the usual culling pyramid.
  Shares must add up to 100 % and are counted in whole photos (5 % of 7 photos is none); photos
  with the same score get the same stars (the better ones).
- ``cut:6,5.5,5,4.5``: a score of at least 6 is 5 stars, at least 5.5 is 4, at least 5 is 3, at
  least 4.5 is 2, anything lower 1 star. Cut-offs are in the model's own units (its scale: 1..10 for AVA).

uiaa never gives 0 (unrated) or -1 (rejected): those are the photographer's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uiaa_cli.errors import UiaaError

DEFAULT_STARS = "top:5%,15%,30%,30%,20%"


@dataclass(frozen=True)
class StarRule:
    """``top`` shares (fractions, 5 stars first) or ``cut`` scores (5 stars first)."""

    mode: str
    values: tuple[float, ...]

    def describe(self) -> str:
        if self.mode == "top":
            return "top:" + ",".join(f"{100 * v:g}%" for v in self.values)
        return "cut:" + ",".join(f"{v:g}" for v in self.values)


def parse_stars(text: str) -> StarRule:
    """``top:A%,B%,...`` (five shares, 5 stars first, adding up to 100 %) or ``cut:S5,S4,S3,S2`` (four
    decreasing scores, the least score for 5, 4, 3 and 2 stars)."""
    mode, _, rest = text.partition(":")
    mode = mode.strip().lower()
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    try:
        if mode == "top":
            values = tuple(float(p.rstrip("%")) / 100.0 for p in parts)
        elif mode == "cut":
            values = tuple(float(p) for p in parts)
        else:
            raise ValueError
    except ValueError:
        raise UiaaError(f"--stars {text!r}: expected top:5%,15%,30%,30%,20% (shares of the photos, 5 stars "
                        "first) or cut:6,5.5,5,4.5 (the least score for 5, 4, 3 and 2 stars)") from None
    if not all(np.isfinite(values)):
        raise UiaaError(f"--stars {text!r}: the values must be finite numbers")
    if mode == "top":
        if len(values) != 5 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise UiaaError(f"--stars {text!r}: give five shares (5 stars first) that add up to 100%")
    elif len(values) != 4 or any(b >= a for a, b in zip(values, values[1:])):
        raise UiaaError(f"--stars {text!r}: give four strictly decreasing scores, the least for 5, 4, 3 and 2 stars")
    return StarRule(mode, values)


def stars(scores: np.ndarray, rule: StarRule) -> np.ndarray:
    """Stars (1..5, int64) for each score."""
    scores = np.asarray(scores, dtype=np.float64)
    if rule.mode == "cut":
        reached = (scores[:, None] >= np.asarray(rule.values)[None, :]).sum(axis=1)  # 4 reached: 5 stars
        return (1 + reached).astype(np.int64)
    n = len(scores)
    descending = np.sort(scores)[::-1]
    better = np.searchsorted(-descending, -scores, side="left")  # photos with a strictly higher score
    # the last rank (exclusive) of 5 stars, of 4, ...: whole photos, so shares are not lost to rounding
    ends = np.rint(np.cumsum(rule.values)[:-1] * n)
    return (5 - np.searchsorted(ends, better, side="right")).astype(np.int64)
