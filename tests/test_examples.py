"""The example data set (examples/make_examples.py) and the demo (examples/demo.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uiaa_cli.images import decode_image
from uiaa_cli.metrics import spearman
from uiaa_cli.tables import read_table

REPO = Path(__file__).resolve().parents[1]
MAKE = REPO / "examples" / "make_examples.py"


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
    assert votes.min() >= 100 and votes.max() <= 200
    # Each vote is the ideal score plus rater noise: the mean vote follows the ideal closely.
    ideal = read_table(examples / "ideal.csv")
    mean = rows[:, 2:12] @ np.arange(1, 11) / votes
    assert spearman(mean, ideal["ideal"]) > 0.95
    assert np.std(mean) > 0.7  # images differ: there is something to learn
    spread = np.sqrt(rows[:, 2:12] @ np.arange(1, 11) ** 2 / votes - mean**2)
    assert 0.8 < spread.mean() < 2.5  # raters disagree, as on AVA (vote std ~1.4)


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


def test_demo_runs_end_to_end(tmp_path):
    """The demo's pipeline (every real command) on a tiny version of the data; the bar is off here."""
    result = subprocess.run([sys.executable, REPO / "examples" / "demo.py", "--out", tmp_path / "demo", "-n", "64",
                             "--epochs", "1", "--size", "32", "--bar", "-2"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("$ uiaa labels", "$ uiaa cache", "$ uiaa train", "$ uiaa predict", "$ uiaa evaluate",
                     "SRCC", "Best and worst", "Held-out SRCC"):
        assert expected in result.stdout
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert len(read_table(tmp_path / "demo" / "preds.csv")) == 16
