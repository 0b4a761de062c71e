"""The example data set (examples/make_examples.py) and the demo (examples/demo.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from uiaa_cli.metrics import spearman
from uiaa_cli.pixels.images import decode_image
from uiaa_cli.tables.table import read_table

REPO = Path(__file__).resolve().parents[1]
MAKE = REPO / "examples" / "make_examples.py"
sys.path.insert(0, str(REPO / "examples"))
from make_examples import example_votes  # noqa: E402


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples") / "ex"
    subprocess.run([sys.executable, MAKE, out, "-n", "120"], check=True, capture_output=True, timeout=60)
    return out


def test_deterministic(examples, tmp_path):
    again = tmp_path / "again"
    subprocess.run([sys.executable, MAKE, again, "-n", "120"], check=True, capture_output=True, timeout=60)
    for name in ("AVA.txt", "test.jpgl", "ideal.csv", "images/100001.jpg", "images/100120.jpg"):
        assert (examples / name).read_bytes() == (again / name).read_bytes(), name
    assert len(list((examples / "images").glob("*.jpg"))) == 120


def test_ava_format_and_votes(examples):
    rows = np.loadtxt(examples / "AVA.txt", dtype=np.int64)
    assert rows.shape == (120, 15)  # index id c1..c10 tag tag challenge
    assert list(rows[:, 0]) == list(range(1, 121))
    votes = rows[:, 2:12].sum(axis=1)
    assert votes.min() >= 120 and votes.max() <= 320
    # Each vote is the ideal score plus rater noise: the mean vote follows the ideal closely.
    ideal = read_table(examples / "ideal.csv")
    mean = rows[:, 2:12] @ np.arange(1, 11) / votes
    assert spearman(mean, ideal["ideal"]) > 0.95
    assert np.std(mean) > 0.5  # images differ: there is something to learn
    spread = np.sqrt(rows[:, 2:12] @ np.arange(1, 11) ** 2 / votes - mean**2)
    assert 0.8 < spread.mean() < 2.5  # raters disagree, as on AVA (vote std ~1.4)


def per_image_votes(counts: np.ndarray) -> list[np.ndarray]:
    return [np.repeat(np.arange(1, 11), row) for row in counts]


def test_votes_are_as_noisy_as_avas():
    """The shipped data (600 images, seed 2024): AVA's mean |skewness| 0.30, sd of means 0.73, mean
    std 1.43 (issue 13's bars, within 0.25-0.35, 0.6-0.9, 1.3-1.55), computed here with scipy."""
    _, props, counts = example_votes()
    votes = per_image_votes(counts)
    skewness = np.array([stats.skew(v) for v in votes])
    means = np.array([v.mean() for v in votes])
    stds = np.array([v.std() for v in votes])
    assert 0.25 <= np.mean(np.abs(skewness)) <= 0.35
    assert 0.6 <= np.std(means) <= 0.9
    assert 1.3 <= np.mean(stds) <= 1.55
    # Skewed the way AVA's are: mostly right-skewed, less so for high-scored images.
    assert np.mean(skewness > 0) > 0.65
    assert stats.linregress(means, skewness).slope < 0
    # Not Gaussian: a normality test rejects far more histograms than chance would.
    assert np.mean([stats.skewtest(v).pvalue < 0.05 for v in votes]) > 0.3


def test_controversy_is_decided_by_what_the_image_shows():
    """Each image's vote std follows its clutter (a visible property), not its mean score."""
    _, props, counts = example_votes()
    stds = np.array([v.std() for v in per_image_votes(counts)])
    assert stats.spearmanr(stds, props["clutter"]).statistic > 0.8
    assert abs(stats.spearmanr(props["clutter"], props["ideal"]).statistic) < 0.15


def test_the_split_goes_through_uiaa_labels(examples, uiaa, tmp_path):
    test_ids = set((examples / "test.jpgl").read_text().split())
    assert len(test_ids) == 30
    train = uiaa("labels", examples / "AVA.txt", "--exclude", examples / "test.jpgl", "-o", tmp_path / "train.csv")
    test = uiaa("labels", examples / "AVA.txt", "--only", examples / "test.jpgl", "-o", tmp_path / "test.csv")
    assert train.returncode == 0 and test.returncode == 0, train.stderr + test.stderr
    train_ids = set(read_table(tmp_path / "train.csv")["image"].tolist())
    assert set(read_table(tmp_path / "test.csv")["image"].tolist()) == test_ids
    assert len(train_ids) == 90 and not train_ids & test_ids


def test_the_signal_is_visible_in_the_pixels(examples):
    """Mean votes follow what the pictures show: here colourfulness, measured on 64 px decodes."""
    rows = np.loadtxt(examples / "AVA.txt", dtype=np.int64)
    mean = rows[:, 2:12] @ np.arange(1, 11) / rows[:, 2:12].sum(axis=1)
    pixels = np.stack([decode_image(examples / "images" / f"{i}.jpg", 64) for i in rows[:, 1]]).astype(float)
    colourfulness = (pixels.max(axis=3) - pixels.min(axis=3)).mean(axis=(1, 2))
    assert spearman(colourfulness, mean) > 0.3


def test_controversy_is_visible_in_the_pixels(examples):
    """The vote std follows how busy the picture is: edges per unit of contrast, on 64 px decodes."""
    rows = np.loadtxt(examples / "AVA.txt", dtype=np.int64)
    counts = rows[:, 2:12]
    std = np.array([v.std() for v in per_image_votes(counts)])
    grey = np.stack([decode_image(examples / "images" / f"{i}.jpg", 64) for i in rows[:, 1]]).astype(float).mean(3)
    edges = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    assert stats.spearmanr(edges / grey.std(axis=(1, 2)), std).statistic > 0.4


def test_demo_runs_end_to_end(tmp_path):
    """The demo's pipeline (every real command) on a tiny version of the data; the bar is off here."""
    result = subprocess.run([sys.executable, REPO / "examples" / "demo.py", "--out", "demo", "-n", "64",
                             "--epochs", "1", "--size", "32", "--bar", "-2", "--std-bar", "-2"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("$ uiaa labels", "$ uiaa cache", "$ uiaa train", "$ uiaa predict", "$ uiaa evaluate",
                     "SRCC", "Best and worst", "Held-out SRCC"):
        assert expected in result.stdout
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert len(read_table(tmp_path / "demo" / "preds.csv")) == 16

    # It ends with the commands that score a folder with its model; pasted into a shell, they do.
    commands = result.stdout.split("Score your own photos")[1].splitlines()[1:3]
    assert commands[1].lstrip().startswith("uiaa predict ")
    scored = subprocess.run(["bash", "-c", "\n".join(["set -eo pipefail", *commands])], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert scored.returncode == 0, scored.stderr
    lines = [line.split("\t") for line in scored.stdout.splitlines()]
    assert len(lines) == 64 and all(name.startswith("demo/examples/images/") for name, _ in lines)
    scores = [float(score) for _, score in lines]
    assert scores == sorted(scores)
