"""Write the uiaa example data set: small synthetic photos with a learnable aesthetic signal and votes.

    python examples/make_examples.py demo/examples            # 600 images, ~2 MB, a few seconds

Writes into OUT:

    images/<id>.jpg   96 x 96 JPEGs (quality 90)
    AVA.txt           index id c1..c10 tag tag challenge   (the format of AVA's AVA.txt)
    test.jpgl         the held-out image ids, one per line  (like AVA's generic_test.jpgl)
    ideal.csv         image, ideal, colour, contrast, sharpness, placement  (the hidden truth)

How it is made (see examples/README.md): every image is a random scene (a gradient sky, a few
shapes, a main subject) rendered with four visible properties drawn at random: colourfulness,
contrast, sharpness (Gaussian blur) and composition (where the subject sits). The image's *ideal*
score is a fixed function of these properties plus a little taste that no pixel shows. As in the
unified formulation's model of raters, every vote is the ideal score plus one rater's noise, rounded
to the nearest integer and clipped to 1..10; each image gets 100-200 votes with an image-specific
rater disagreement. Everything comes from one seeded generator, so the output is the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SIZE = 96
FIRST_ID = 100001  # AVA-like numeric ids


def properties(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The visible properties of ``n`` images, each in [0, 1], and their hidden ideal scores."""
    colour = rng.uniform(0, 1, n)      # 0: grey, 1: fully saturated
    contrast = rng.uniform(0, 1, n)    # 0: washed out, 1: full range
    sharpness = rng.uniform(0, 1, n)   # 0: blurred (radius 2.4 px), 1: sharp
    placement = rng.uniform(0, 1, n)   # 0: subject at the border, 1: on a third
    taste = rng.normal(0, 0.35, n)     # what raters like that no pixel shows: caps the best SRCC
    ideal = 1.6 + 2.4 * colour + 2.0 * contrast + 1.6 * sharpness + 0.8 * placement + taste
    return {"colour": colour, "contrast": contrast, "sharpness": sharpness, "placement": placement,
            "ideal": np.clip(ideal, 1.0, 10.0)}


def render(rng: np.random.Generator, colour: float, contrast: float, sharpness: float,
           placement: float) -> Image.Image:
    """One scene: sky gradient, ground, a few shapes and a subject, then the four properties applied."""
    top, bottom = rng.uniform(40, 255, 3), rng.uniform(0, 200, 3)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, SIZE, 1))
    image = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    horizon = int(rng.uniform(0.55, 0.8) * SIZE)
    draw.rectangle([0, horizon, SIZE, SIZE], fill=tuple(int(v) for v in rng.uniform(0, 160, 3)))
    for _ in range(int(rng.integers(2, 6))):  # clutter
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(3, 10)
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


def votes(rng: np.random.Generator, ideal: np.ndarray) -> np.ndarray:
    """Counts ``(N, 10)``: each vote = ideal + rater noise, rounded and clipped to 1..10."""
    n_votes = rng.integers(100, 201, len(ideal))
    spread = rng.uniform(1.0, 1.8, len(ideal))  # how much this image's raters disagree
    image = np.repeat(np.arange(len(ideal)), n_votes)
    score = np.clip(np.rint(ideal[image] + spread[image] * rng.standard_normal(len(image))), 1, 10)
    counts = np.bincount(image * 10 + score.astype(np.int64) - 1, minlength=10 * len(ideal))
    return counts.reshape(len(ideal), 10)


def make_examples(out: Path, n: int = 600, test_share: float = 0.25, seed: int = 2024) -> None:
    """Write ``n`` images, their votes (AVA.txt), a held-out id list and the hidden truth to ``out``."""
    rng = np.random.default_rng(seed)
    props = properties(rng, n)
    ids = np.arange(FIRST_ID, FIRST_ID + n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):  # one rendering per image; the rest is whole-column numpy
        image = render(rng, props["colour"][i], props["contrast"][i], props["sharpness"][i], props["placement"][i])
        image.save(out / "images" / f"{image_id}.jpg", quality=90)
    counts = votes(rng, props["ideal"])
    tags = rng.integers(0, 66, (n, 2))
    challenge = rng.integers(1, 1400, n)
    rows = np.column_stack([np.arange(1, n + 1), ids, counts, tags, challenge])
    np.savetxt(out / "AVA.txt", rows, fmt="%d", delimiter=" ")
    test = np.sort(rng.choice(ids, int(round(n * test_share)), replace=False))
    np.savetxt(out / "test.jpgl", test, fmt="%d")
    truth = np.column_stack([ids] + [props[k] for k in ("ideal", "colour", "contrast", "sharpness", "placement")])
    np.savetxt(out / "ideal.csv", truth, fmt=["%d"] + ["%.4f"] * 5, delimiter=",",
               header="image,ideal,colour,contrast,sharpness,placement", comments="")


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
