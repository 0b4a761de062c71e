"""examples/ablation.py: the grid's bookkeeping (flagged runs never averaged) and a real --quick run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uiaa_cli.tables.table import read_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import ablation  # noqa: E402


def rows() -> list[dict]:
    """Two cells x three seeds; one run diverged, one never beat chance."""
    out = []
    for kind, srccs, flags in (("gauss-mv", [0.70, 0.74, 0.10], ["", "", "chance"]),
                               ("binary", [0.50, math.nan, 0.56], ["", "diverged", ""])):
        for seed, (srcc, flag) in enumerate(zip(srccs, flags, strict=True)):
            row = {"kind": kind, "loss": "ce", "seed": seed, "epochs": 3, "lr": 1e-2, "lr_end": 1e-3,
                   "val_images": 45, "val_srcc": 0.5, "wall_s": 10.0, "flags": flag}
            if flag != "diverged":
                row.update(accuracy=0.6 + seed / 100, srcc=srcc, pcc=srcc - 0.05)
            out.append(row)
    return out


def test_flagged_runs_are_kept_in_results_but_not_averaged(tmp_path: Path) -> None:
    results = ablation.results_table(rows())
    assert results.names[:8] == ["kind", "loss", "seed", "lr", "lr_end", "epochs", "val_images", "val_srcc"]
    assert results.names[-2:] == ["wall_s", "flags"] and "srcc" in results and "accuracy" in results
    assert np.isnan(results["srcc"][4])  # the diverged run: a row with no metrics
    summary = ablation.summary_table(results)
    assert summary["kind"].tolist() == ["gauss-mv", "binary"]
    assert summary["runs"].tolist() == [3, 3] and summary["used"].tolist() == [2, 2]
    assert summary["srcc_mean"][0] == pytest.approx(0.72)  # (0.70 + 0.74) / 2: 0.10 left out
    assert summary["srcc_std"][0] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert summary["srcc_mean"][1] == pytest.approx(0.53)
    assert summary["accuracy_mean"][1] == pytest.approx((0.60 + 0.62) / 2)
    ablation.plot(results, tmp_path / "p.png", "test")
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.width >= 480


def test_chance_is_two_standard_errors_of_a_random_ranking() -> None:
    log = "uiaa train: 405 training and 45 validation images, 32 px, ...\n"
    assert ablation.val_images(log) == 45
    assert ablation.val_images("uiaa train: 1,234 training and 1,000 validation images") == 1000
    assert ablation.val_images("nothing here") == 0


def test_the_chance_flag_looks_at_the_epoch_best_pt_holds() -> None:
    log = ("uiaa train: epoch 3/3  lr 1.00e-04  loss 2.0592  SRCC 0.1257\n"
           "uiaa train: best.pt  epoch 2  val loss 1.8163  SRCC 0.3866  (highest validation SRCC, --select srcc)\n"
           "uiaa train: last.pt  epoch 3  val loss 1.8163  SRCC 0.1257\n")
    assert ablation.kept_epoch(log) == 2
    assert ablation.kept_epoch("uiaa train: done") is None


def test_grid_parsing() -> None:
    assert ablation.parse_grid("default", "default") == ablation.DEFAULT_CELLS
    assert ablation.parse_grid("rsd,soft", "all") == [(k, loss) for k in ("rsd", "soft")
                                                      for loss in ("ce", "mse", "huber", "emd")]
    with pytest.raises(SystemExit):
        ablation.parse_grid("gauss", "ce")


# about a minute on 2 free cores (4 trainings of 1 epoch)
def test_quick_grid_runs_the_real_commands(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, REPO / "examples" / "ablation.py", "--quick", "--out", tmp_path / "q"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "$ uiaa train" in done.stdout and "$ uiaa predict" in done.stdout and "$ uiaa evaluate" in done.stdout
    results = read_table(tmp_path / "q" / "results.csv")
    assert len(results) == 4
    assert sorted(set(results["kind"].tolist())) == ["binary", "gauss-mv"]
    assert {"srcc", "accuracy", "pcc", "wall_s", "flags", "lr"} <= set(results.names)
    assert np.isfinite(results["srcc"]).all()  # every run was evaluated on the test images
    summary = read_table(tmp_path / "q" / "summary.csv")
    assert summary["runs"].tolist() == [2, 2]
    with Image.open(tmp_path / "q" / "ablation.png") as im:
        assert im.format == "PNG"
