"""``train --select``: which epoch best.pt holds, and the summary that shows best and last."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_training import FAST, make_dataset

from uiaa_cli.errors import UiaaError
from uiaa_cli.models.networks import load_checkpoint
from uiaa_cli.tables.table import read_table
from uiaa_cli.training.report import summary_lines
from uiaa_cli.training.settings import SELECT_RULES, best_epoch

HISTORY = [  # a noisy early SRCC peak, a steadier plateau, the loss lowest at epoch 4
    {"epoch": 1, "val_loss": 2.0, "srcc": 0.50},
    {"epoch": 2, "val_loss": 1.7, "srcc": 0.71},
    {"epoch": 3, "val_loss": 1.6, "srcc": 0.60},
    {"epoch": 4, "val_loss": 1.5, "srcc": 0.68},
    {"epoch": 5, "val_loss": 1.55, "srcc": 0.69},
    {"epoch": 6, "val_loss": 1.52, "srcc": 0.70},
]


def test_each_rule_by_hand():
    assert HISTORY[best_epoch(HISTORY, "srcc")]["epoch"] == 2
    assert HISTORY[best_epoch(HISTORY, "loss")]["epoch"] == 4
    # trailing means: .50 .605 .603 .663 .657 .690 -> epoch 6
    assert HISTORY[best_epoch(HISTORY, "smooth")]["epoch"] == 6
    assert HISTORY[best_epoch(HISTORY, "last")]["epoch"] == 6


def test_ties_go_later_and_missing_values_lose():
    tied = [{"epoch": 1, "srcc": 0.7, "val_loss": 1.0}, {"epoch": 2, "srcc": 0.7, "val_loss": 1.0}]
    assert best_epoch(tied, "srcc") == 1 and best_epoch(tied, "loss") == 1
    holes = [{"epoch": 1, "srcc": 0.4, "val_loss": 1.0}, {"epoch": 2, "srcc": None, "val_loss": math.nan}]
    assert best_epoch(holes, "srcc") == 0 and best_epoch(holes, "loss") == 0
    none = [{"epoch": e, "srcc": None, "val_loss": None} for e in (1, 2, 3)]
    assert all(best_epoch(none, rule) == 2 for rule in SELECT_RULES)  # no validation: best is last
    with pytest.raises(UiaaError, match="unknown --select"):
        best_epoch(HISTORY, "median")


def test_summary_names_both_checkpoints():
    best, last = summary_lines(HISTORY, "loss")
    assert best.startswith("uiaa train: best.pt  epoch 4  val loss 1.5000  SRCC 0.6800")
    assert "--select loss" in best and "lowest validation loss" in best
    assert last.startswith("uiaa train: last.pt  epoch 6  val loss 1.5200  SRCC 0.7000")
    assert "MSE n/a" in last


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("select"), 64, seed=4)


def test_select_through_the_command(tiny: Path, tmp_path: Path, uiaa) -> None:
    """A 3-epoch run with --select loss: best.pt holds the epoch of the lowest validation loss in
    metrics.csv, and the summary shows it and the last epoch. An mse head's validation follows
    evaluate's rules: no distribution metric from linear outputs."""
    done = uiaa("train", tiny, *FAST, "--epochs", "3", "--loss", "mse", "--lr", "1e-3,1e-4", "--select", "loss",
                "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    history = read_table(tmp_path / "run" / "metrics.csv")
    want = int(history["epoch"][np.nanargmin(np.where(np.isnan(history["val_loss"]), np.inf, history["val_loss"]))])
    _, config, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert config["epoch"] == want
    text = done.stderr.decode()
    assert re.search(rf"uiaa train: best\.pt  epoch {want}  val loss ", text), text
    assert "uiaa train: last.pt  epoch 3  val loss " in text and "--select loss" in text
    for name in ("kl", "emd", "std_srcc", "std_pcc"):
        assert np.isnan(history[name]).all(), name
    assert np.isfinite(history["srcc"]).all() and np.isfinite(history["mse"]).all()


def test_unknown_rule_is_a_usage_error(tiny: Path, tmp_path: Path, uiaa) -> None:
    done = uiaa("train", tiny, *FAST, "--select", "median", "--out", tmp_path / "run")
    assert done.returncode == 2 and not (tmp_path / "run").exists()
