"""``uiaa train --kind``: one cache made at gauss-mv serves every kind; targets as ``uiaa labels`` makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_uiaa
from test_training import FAST, make_dataset, train

from uiaa_cli.models.networks import load_checkpoint
from uiaa_cli.tables.table import read_table
from uiaa_cli.targets.labels import LabelSettings
from uiaa_cli.targets.table_targets import labels_of
from uiaa_cli.training.run_data import split_rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 images labelled gauss-mv and cached once at 32 px."""
    folder = tmp_path_factory.mktemp("kind")
    labels = make_dataset(folder, 48, seed=3, kind="gauss-mv")
    done = run_uiaa("cache", labels, "--images", folder, "--size", "32", "--workers", "1", "-o", folder / "c.h5")
    assert done.returncode == 0, done.stderr
    return folder / "c.h5"


def test_a_gauss_mv_cache_trains_rsd_and_the_checkpoint_says_so(cache: Path, tmp_path: Path) -> None:
    done = train(cache, *FAST, "--epochs", "1", "--kind", "rsd", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "rsd with ce" in done.stderr
    _, config, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert config["kind"] == "rsd"
    assert config["targets"] == [f"p_{b}" for b in range(1, 11)]
    assert config["kind_params"]["derived"] is True and config["kind_params"]["threshold"] == 5.0
    # Without --kind: the cache's own targets and the parameters 'labels' recorded.
    done = train(cache, *FAST, "--epochs", "1", "--out", tmp_path / "own")
    assert done.returncode == 0, done.stderr
    _, config, _ = load_checkpoint(tmp_path / "own" / "best.pt")
    assert config["kind"] == "gauss-mv"
    # The labels came as a plain CSV, which records no lam/cap/divisor (Parquet and HDF5 do): only the
    # threshold, the scale's default, is known.
    assert config["kind_params"] == {"threshold": 5.0, "derived": False}


@pytest.mark.parametrize("args", [["--kind", "gauss-mv", "--lam", "0.2", "--cap", "1.0", "--divisor", "var"],
                                  ["--kind", "soft"], ["--kind", "gauss-nv"], ["--kind", "rsd"],
                                  ["--kind", "binary", "--threshold", "4.5"]])
def test_derived_targets_are_those_of_labels(cache: Path, args: list[str]) -> None:
    """The targets derived from a gauss-mv cache equal the target columns of 'uiaa labels --kind K'
    run on the original counts (an independent path through the command)."""
    folder = cache.parent
    made = run_uiaa("labels", folder / "counts.csv", *args, "-o", folder / "other.csv")
    assert made.returncode == 0, made.stderr
    other = read_table(folder / "other.csv")
    own = read_table(cache)
    opts = dict(zip(args[::2], args[1::2], strict=True))
    settings = LabelSettings(opts["--kind"], float(opts.get("--lam", 0.5)), float(opts.get("--cap", 1.5)),
                             0.0, float(opts["--threshold"]) if "--threshold" in opts else None,
                             opts.get("--divisor", "2var"))
    derived = labels_of(own, str(cache), derive=settings)
    columns = [n for n in other.names if n.startswith("p_")]
    order = {name: i for i, name in enumerate(own["image"].tolist())}
    rows = np.array([order[name] for name in other["image"].tolist()])
    np.testing.assert_allclose(derived.targets[rows], other.matrix(columns), rtol=0, atol=1e-6)
    assert derived.threshold == float(opts.get("--threshold", 5))


def test_binary_delta_leaves_margin_images_out_of_training_only(cache: Path, tmp_path: Path) -> None:
    own = read_table(cache)
    mean = own["mean"]
    margin = (mean <= 6) & (mean > 4)  # neither high (mean > 5 + 1) nor low (mean <= 5 - 1)
    assert 3 < margin.sum() < len(mean) - 10  # the data set has both kinds of images
    train_rows, val_rows = split_rows(len(mean), 0.1, 0)  # the split of seed 0, drawn before any kind
    expected = int((~margin[train_rows]).sum())
    done = train(cache, *FAST, "--epochs", "1", "--kind", "binary", "--delta", "1", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert f"{expected:,} training and {len(val_rows):,} validation images" in done.stderr, done.stderr
    _, config, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert config["kind"] == "binary" and config["kind_params"]["delta"] == 1.0
    history = read_table(tmp_path / "run" / "metrics.csv")
    assert np.isfinite(history["val_loss"]).all() and np.isfinite(history["srcc"]).all()


def test_kind_needs_vote_columns_and_valid_parameters(cache: Path, tmp_path: Path) -> None:
    table = read_table(cache)
    bare = tmp_path / "bare.csv"
    bare.write_text("image,mean,p_low,p_high\n" + "".join(
        f"{name},{m},{1 - m / 10},{m / 10}\n" for name, m in zip(table["image"], table["mean"], strict=True)))
    done = train(bare, *FAST, "--images", cache.parent, "--kind", "rsd", "--out", tmp_path / "r")
    assert done.returncode == 2
    assert "--kind needs the vote columns" in done.stderr and str(bare) in done.stderr
    done = train(cache, *FAST, "--kind", "gauss-mv", "--lam", "1.5", "--out", tmp_path / "r2")
    assert done.returncode == 2 and "invalid value for '--lam': must lie in [0, 1]" in done.stderr
