"""Write the uiaa example data set: small synthetic photos with a learnable aesthetic signal and votes.

    python examples/make_examples.py demo/examples            # 600 images, ~2 MB, a few seconds

Writes into OUT:

    images/<id>.jpg   96 x 96 JPEGs (quality 90)
    AVA.txt           index id c1..c10 tag tag challenge   (the format of AVA's AVA.txt)
    test.jpgl         the held-out image ids, one per line  (like AVA's generic_test.jpgl)
    ideal.csv         image, ideal, colour, contrast, sharpness, placement, clutter  (the hidden truth)

How it is made (see examples/README.md): every image is a random scene (a gradient sky, clutter,
a main subject) rendered with five visible properties drawn at random: colourfulness, contrast,
sharpness (Gaussian blur), composition (where the subject sits) and clutter. The image's *ideal*
score is a fixed function of the first four plus a little taste that no pixel shows. Every vote is
the ideal score plus one rater's noise, rounded to the nearest integer and clipped to 1..10; the
noise is skewed, with AVA's skewness for the image's mean, and its sd is set by the clutter: busy
scenes divide raters. 120-320 votes per image. Everything comes from one seeded generator, so the
output is the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SIZE = 96
FIRST_ID = 100001  # AVA-like numeric ids
PROPERTIES = ("colour", "contrast", "sharpness", "placement", "clutter")


# The vote model: measured on 19,987 real AVA images (../shared/data/AVA_sample.txt, lines 11-20000 of
# AVA.txt) with examples/vote_statistics.py, then tuned by simulation until this generator's votes
# give the same statistics (AVA -> ours on 20,000 images: mean |skewness| 0.281 -> 0.27, sd of the
# image means 0.732 -> 0.75, mean vote std 1.438 -> 1.44, sd of the vote std 0.197 -> 0.19, mean
# skewness 0.206 -> 0.20, skewness falling with the mean, slope -0.083 -> -0.09). Only these
# constants are shipped; no AVA histogram is.
SKEW_AT_MEAN = 0.25        # latent skewness of an image's rater noise at the AVA mean vote (5.38)
SKEW_SLOPE = -0.035        # ... change per unit of mean (AVA's high-scored images lean left)
SKEW_SPREAD = 0.27         # ... image-to-image sd of that skewness (what AVA shows beyond sampling)
NOISE_SD = 1.43            # rater noise sd of an image of average clutter
NOISE_SD_BY_CLUTTER = 1.0  # ... from 1.43 - 0.5 (a clean scene) to 1.43 + 0.5 (a busy one)
MEAN_VOTE = 5.38


def properties(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The visible properties of ``n`` images, each in [0, 1], and their hidden ideal scores."""
    colour = rng.uniform(0, 1, n)      # 0: grey, 1: fully saturated
    contrast = rng.uniform(0, 1, n)    # 0: washed out, 1: full range
    sharpness = rng.uniform(0, 1, n)   # 0: blurred (radius 2.4 px), 1: sharp
    placement = rng.uniform(0, 1, n)   # 0: subject at the border, 1: on a third
    clutter = rng.uniform(0, 1, n)     # 0: a clean scene, 1: a busy one (raters disagree; not the score)
    taste = rng.normal(0, 0.3, n)      # what raters like that no pixel shows: caps the best SRCC
    ideal = 3.1 + 1.6 * colour + 1.3 * contrast + 1.05 * sharpness + 0.55 * placement + taste
    return {"colour": colour, "contrast": contrast, "sharpness": sharpness, "placement": placement,
            "clutter": clutter, "ideal": np.clip(ideal, 1.0, 10.0)}


def render(rng: np.random.Generator, colour: float, contrast: float, sharpness: float,
           placement: float, clutter: float) -> Image.Image:
    """One scene: sky gradient, ground, clutter and a subject, then the properties applied."""
    top, bottom = rng.uniform(40, 255, 3), rng.uniform(0, 200, 3)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, SIZE, 1))
    image = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    horizon = int(rng.uniform(0.55, 0.8) * SIZE)
    draw.rectangle([0, horizon, SIZE, SIZE], fill=tuple(int(v) for v in rng.uniform(0, 160, 3)))
    for _ in range(int(round(24 * clutter))):  # clutter: none in a clean scene, 24 small squares in a busy one
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(3, 8)
        draw.rectangle([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    # The subject: on a third of the frame when placement is 1, pushed towards a border when 0.
    third = SIZE / 3 * rng.choice([1, 2], 2)
    border = np.where(third < SIZE / 2, 6.0, SIZE - 6.0)
    cx, cy = placement * third + (1 - placement) * border
    r = rng.uniform(10, 16)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
                 outline=(255, 255, 255), width=2)
    image = ImageEnhance.Color(image).enhance(0.05 + 1.6 * colour)
    image = ImageEnhance.Contrast(image).enhance(0.25 + 1.1 * contrast)
    return image.filter(ImageFilter.GaussianBlur(float(2.4 * (1 - sharpness))))


# Skew-normal noise with a given skewness: skewness as a function of the shape's delta, inverted by table.
_DELTA = np.linspace(0.0, 0.9995, 4001)
_SKEWNESS = (4 - np.pi) / 2 * (_DELTA * np.sqrt(2 / np.pi)) ** 3 / (1 - 2 * _DELTA**2 / np.pi) ** 1.5


def skewed_noise(rng: np.random.Generator, skewness: np.ndarray) -> np.ndarray:
    """One standard (mean 0, sd 1) skew-normal draw per element, of the given skewness (|.| < 0.99)."""
    delta = np.sign(skewness) * np.interp(np.abs(skewness), _SKEWNESS, _DELTA)
    x = delta * np.abs(rng.standard_normal(len(delta))) + np.sqrt(1 - delta**2) * rng.standard_normal(len(delta))
    shift = delta * np.sqrt(2 / np.pi)
    return (x - shift) / np.sqrt(1 - shift**2)


def votes(rng: np.random.Generator, ideal: np.ndarray, clutter: np.ndarray) -> np.ndarray:
    """Counts ``(N, 10)``: each vote = ideal + skewed rater noise, rounded and clipped to 1..10.

    How much an image's raters disagree is decided by its clutter (what the picture shows); how
    lopsided their votes are follows the image's mean as on AVA, with AVA's image-to-image spread."""
    n_votes = rng.integers(120, 321, len(ideal))
    noise_sd = NOISE_SD + NOISE_SD_BY_CLUTTER * (clutter - 0.5)
    skewness = np.clip(SKEW_AT_MEAN + SKEW_SLOPE * (ideal - MEAN_VOTE) + rng.normal(0, SKEW_SPREAD, len(ideal)),
                       -0.95, 0.95)
    image = np.repeat(np.arange(len(ideal)), n_votes)
    noise = skewed_noise(rng, skewness[image])
    score = np.clip(np.rint(ideal[image] + noise_sd[image] * noise), 1, 10)
    counts = np.bincount(image * 10 + score.astype(np.int64) - 1, minlength=10 * len(ideal))
    return counts.reshape(len(ideal), 10)


def example_votes(n: int = 600, seed: int = 2024) -> tuple[np.random.Generator, dict[str, np.ndarray], np.ndarray]:
    """The generator (advanced past them), the properties and the vote counts of the example data:
    drawn before any picture, so the votes can be checked without rendering."""
    rng = np.random.default_rng(seed)
    props = properties(rng, n)
    return rng, props, votes(rng, props["ideal"], props["clutter"])


def make_examples(out: Path, n: int = 600, test_share: float = 0.25, seed: int = 2024) -> None:
    """Write ``n`` images, their votes (AVA.txt), a held-out id list and the hidden truth to ``out``."""
    rng, props, counts = example_votes(n, seed)
    ids = np.arange(FIRST_ID, FIRST_ID + n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):  # one rendering per image; the rest is whole-column numpy
        image = render(rng, *(props[k][i] for k in PROPERTIES))
        image.save(out / "images" / f"{image_id}.jpg", quality=90)
    tags = rng.integers(0, 66, (n, 2))
    challenge = rng.integers(1, 1400, n)
    rows = np.column_stack([np.arange(1, n + 1), ids, counts, tags, challenge])
    np.savetxt(out / "AVA.txt", rows, fmt="%d", delimiter=" ")
    test = np.sort(rng.choice(ids, int(round(n * test_share)), replace=False))
    np.savetxt(out / "test.jpgl", test, fmt="%d")
    truth = np.column_stack([ids, props["ideal"]] + [props[k] for k in PROPERTIES])
    np.savetxt(out / "ideal.csv", truth, fmt=["%d"] + ["%.4f"] * (1 + len(PROPERTIES)), delimiter=",",
               header=",".join(["image", "ideal", *PROPERTIES]), comments="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="demo/examples", type=Path, help="output folder")
    parser.add_argument("-n", type=int, default=600, help="number of images (default 600)")
    parser.add_argument("--test-share", type=float, default=0.25, help="share of held-out images")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    make_examples(args.out, args.n, args.test_share, args.seed)
    print(f"make_examples: {args.n} images, AVA.txt and test.jpgl in {args.out}")


if __name__ == "__main__":
    main()
