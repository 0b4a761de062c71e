"""How noisy are the votes of an AVA.txt-format file? The statistics the example data is tuned to.

    python examples/vote_statistics.py ../shared/data/AVA_sample.txt demo/examples/AVA.txt

For each file: images, mean |skewness| of the vote histograms, mean skewness, the slope of skewness
against the mean vote, the sd of the image means, the mean and the sd of the vote std (population
moments of each image's votes on 1..10). make_examples.py's vote-model constants were tuned until
its votes matched these figures on AVA; only the constants are shipped, never AVA's votes.
"""

from __future__ import annotations

import sys

import numpy as np


def vote_statistics(counts: np.ndarray) -> dict[str, float]:
    """The noise statistics of vote counts ``(N, 10)`` over scores 1..10."""
    counts = np.asarray(counts, dtype=np.float64)
    scores = np.arange(1, counts.shape[1] + 1, dtype=np.float64)
    n = counts.sum(axis=1)
    mean = counts @ scores / n
    centred = scores[None, :] - mean[:, None]
    std = np.sqrt(np.sum(counts * centred**2, axis=1) / n)
    skewness = np.sum(counts * centred**3, axis=1) / n / np.where(std > 0, std, np.nan) ** 3
    skewness = skewness[std > 0]  # an image whose votes are all one score has no skewness
    return {"images": float(len(n)), "mean_abs_skewness": float(np.mean(np.abs(skewness))),
            "mean_skewness": float(np.mean(skewness)),
            "skewness_slope": float(np.polyfit(mean[std > 0], skewness, 1)[0]),
            "sd_of_means": float(np.std(mean)), "mean_std": float(np.mean(std)), "sd_of_std": float(np.std(std))}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        stats = vote_statistics(np.loadtxt(path, dtype=np.int64, usecols=range(2, 12)))
        print(f"{path}\n" + "".join(f"  {k:<18} {v:10.3f}\n" for k, v in stats.items()), end="")


if __name__ == "__main__":
    main()
