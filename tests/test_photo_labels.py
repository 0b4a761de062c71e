"""Your own taste: ``labels --format xmp`` reads a catalogue's star ratings as single votes (the counts
exiftool reports), a documented rater variance for the Gaussian kinds, and a fine-tune from a uiaa
checkpoint on another scale."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from photo_files import DARKTABLE_SIDECAR, save_dng, save_heic, save_jpeg, scene, shared_model

from uiaa_cli.targets.labels import RATER_VARIANCE, LabelSettings, make_targets

pytest.importorskip("exiv2")

VALUES = (-1, 0, 1, 2, 3, 4, 5, None)  # None: no rating at all


def write_ratings(paths_by_value: dict[int, list[Path]]) -> None:
    """Embed ``xmp:Rating`` with exiftool (one call per value), else python-exiv2: not uiaa's writer."""
    if shutil.which("exiftool"):
        for value, paths in paths_by_value.items():
            subprocess.run(["exiftool", "-q", "-overwrite_original", f"-XMP-xmp:Rating={value}", *map(str, paths)],
                           check=True)
        return
    import exiv2

    for value, paths in paths_by_value.items():
        for path in paths:
            image = exiv2.ImageFactory.open(str(path))
            image.readMetadata()
            image.xmpData()["Xmp.xmp.Rating"] = str(value)
            image.writeMetadata()


def independent_counts(folder: Path) -> Counter:
    """How many files hold each XMP:Rating, as exiftool (else python-exiv2) reads them; None: no rating."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if shutil.which("exiftool"):
        out = subprocess.run(["exiftool", "-j", "-XMP:Rating", *map(str, files)], capture_output=True, text=True)
        return Counter(item.get("Rating") for item in json.loads(out.stdout))
    import exiv2

    found = Counter()
    for path in files:
        try:
            image = exiv2.ImageFactory.open(str(path))
            image.readMetadata()
        except exiv2.Exiv2Error:  # exiftool too finds no rating in a file it cannot read
            found[None] += 1
            continue
        values = {d.key(): d.toString() for d in image.xmpData()}
        found[int(values["Xmp.xmp.Rating"]) if "Xmp.xmp.Rating" in values else None] += 1
    return found


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """200 rated files: 150 JPEGs with embedded ratings and 50 darktable sidecars whose RAWs are elsewhere."""
    folder = tmp_path_factory.mktemp("catalogue") / "photos"
    (folder / "2024").mkdir(parents=True)
    rng = np.random.default_rng(5)
    by_value: dict[int, list[Path]] = {}
    tiny = scene(0, 16, 12)
    for i in range(150):
        path = save_jpeg(folder / ("2024" if i % 2 else "") / f"IMG_{i:04d}.jpg", tiny)
        value = VALUES[rng.integers(len(VALUES))]
        if value is not None:
            by_value.setdefault(value, []).append(path)
    write_ratings(by_value)
    for i in range(50):
        value = VALUES[rng.integers(len(VALUES) - 1)]
        (folder / f"RAW_{i:04d}.CR2.xmp").write_text(DARKTABLE_SIDECAR.format(rating=value, image=f"RAW_{i:04d}.CR2"))
    return folder


def test_labels_from_xmp_are_the_counts_exiftool_reports(catalogue, uiaa, tmp_path):
    truth = independent_counts(catalogue)
    assert sum(truth.values()) == 200
    result = uiaa("labels", catalogue, "--format", "xmp", "-o", tmp_path / "personal.csv")
    assert result.returncode == 0, result.stderr.decode()
    rows = list(csv.DictReader(open(tmp_path / "personal.csv")))
    got = Counter(int(float(r["mean"])) for r in rows)
    assert all(r["votes"] == "1" for r in rows)
    assert got[1] == truth[1] + truth[-1]  # rejected: the lowest class
    assert [got[s] for s in (2, 3, 4, 5)] == [truth[s] for s in (2, 3, 4, 5)]
    unrated = truth[0] + truth[None]
    assert len(rows) == 200 - unrated
    summary = result.stderr.decode()
    assert f"{truth[-1]:,} rejected (-1) counted as 1 star" in summary
    assert f"{unrated:,} unrated (0 or no rating) left out" in summary
    names = {r["image"] for r in rows}
    assert all(n.startswith(("IMG_", "2024/IMG_", "RAW_")) for n in names)
    assert any(n.endswith(".CR2") for n in names)  # a sidecar alone stands for its RAW


def test_one_vote_gets_the_documented_rater_variance():
    """gauss-nv with one vote of 3 on 1..5: exp(-(b - 3)^2 / (2 * 1)) normalised, not a one-hot."""
    bins = np.arange(1.0, 6.0)
    counts = np.array([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=float)
    got = make_targets(counts, bins, LabelSettings("gauss-nv", rater_var=RATER_VARIANCE)).targets
    for row, vote in zip(got, (3, 1)):
        expected = np.exp(-((bins - vote) ** 2) / (2 * RATER_VARIANCE))
        np.testing.assert_allclose(row, expected / expected.sum(), rtol=1e-12)
    assert got[0, 1] / got[0, 2] == pytest.approx(np.exp(-0.5))  # a neighbour: 0.61 of the vote
    # gauss-mv halves it (lam 0.5); without a rater variance, the one-hot of before
    mv = make_targets(counts, bins, LabelSettings("gauss-mv", rater_var=RATER_VARIANCE)).targets
    assert mv[0, 1] / mv[0, 2] == pytest.approx(np.exp(-1.0))
    np.testing.assert_array_equal(make_targets(counts, bins, LabelSettings("gauss-nv")).targets, counts)
    # images with several votes keep their own variance
    many = np.array([[0, 2, 0, 2, 0]], dtype=float)
    np.testing.assert_array_equal(make_targets(many, bins, LabelSettings("gauss-nv", rater_var=5.0)).targets,
                                  make_targets(many, bins, LabelSettings("gauss-nv")).targets)


def test_rater_variance_on_the_command_line(catalogue, uiaa):
    one_hot = uiaa("labels", catalogue, "--kind", "gauss-nv", "--rater-var", "0")
    spread = uiaa("labels", catalogue, "--kind", "gauss-nv")
    assert one_hot.returncode == 0 and spread.returncode == 0, spread.stderr.decode()
    first = lambda out: next(csv.DictReader(io.StringIO(out.decode())))  # noqa: E731
    a, b = first(one_hot.stdout), first(spread.stdout)
    vote = int(float(a["mean"]))
    assert float(a[f"p_{vote}"]) == 1.0 and float(b[f"p_{vote}"]) < 0.7
    assert "single votes get variance 1 (--rater-var)" in spread.stderr.decode()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return shared_model(tmp_path_factory)


def test_fine_tune_an_ava_model_on_your_own_stars(tmp_path, model, uiaa):
    """AVA's 1..10 model, then a catalogue's 1..5 stars (JPEG, DNG and HEIC photos): the backbone is kept
    (its --arch too), a new head of 5 outputs is made, and it trains end to end on CPU."""
    import torch

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(16):
        pixels = scene(100 + i, 48, 32)
        path = (save_dng(photos / f"IMG_{i:04d}.dng", pixels) if i % 4 == 0 else
                save_heic(photos / f"IMG_{i:04d}.heic", pixels) if i % 4 == 1 else
                save_jpeg(photos / f"IMG_{i:04d}.jpg", pixels))
        sidecar = photos / f"{path.name}.xmp"
        sidecar.write_text(DARKTABLE_SIDECAR.format(rating=1 + i % 5, image=path.name))
    labels = uiaa("labels", photos, "-o", tmp_path / "personal.csv")
    assert labels.returncode == 0, labels.stderr.decode()
    result = uiaa("train", tmp_path / "personal.csv", "--images", photos, "--weights", model, "--size", 32,
                  "--epochs", 1, "--batch-size", 4, "--device", "cpu", "--workers", 0, "--val-frac", 0.25,
                  "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 0, result.stderr.decode()
    source = torch.load(model, weights_only=True)
    tuned = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    config = tuned["config"]
    assert config["arch"] == "resnet18" and config["bins"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert config["targets"] == [f"p_{b}" for b in range(1, 6)]
    assert tuned["model"]["fc.weight"].shape == (5, 512) and source["model"]["fc.weight"].shape == (10, 512)
    import torchvision

    torch.manual_seed(1)
    fresh = torchvision.models.resnet18(weights=None).conv1.weight.detach().flatten()
    before, after = source["model"]["conv1.weight"].flatten(), tuned["model"]["conv1.weight"].flatten()
    assert torch.corrcoef(torch.stack([before, after]))[0, 1] > 0.9  # one epoch away from the AVA backbone
    assert abs(torch.corrcoef(torch.stack([fresh, after]))[0, 1]) < 0.2  # not a new random one
