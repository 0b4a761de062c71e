"""examples/ava.py on a tiny AVA-layout folder, on CPU: every stage runs, a second run skips them all,
and the Table III row prints with the paper's row beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO, TEST_DATA
from PIL import Image

SCRIPT = REPO / "examples" / "ava.py"
STAGES = ("split", "cache", "train", "predict", "evaluate")


def make_ava(folder: Path, n: int = 40, tests: int = 10) -> tuple[list[str], list[str]]:
    """``folder`` laid out like AVA: AVA.txt (``n`` real rows of the excerpt: AVA ids and votes),
    generic_test.jpgl (``tests`` of those ids and one id AVA.txt lacks, as lists do) and images/<id>.jpg
    (generated 40x32 JPEGs whose brightness follows the mean vote)."""
    rows = [line.split() for line in (TEST_DATA / "AVA_excerpt.txt").read_text().splitlines()[:n]]
    ids = [r[1] for r in rows]
    (folder / "images").mkdir(parents=True)
    (folder / "AVA.txt").write_text("".join(" ".join(r) + "\n" for r in rows))
    (folder / "generic_test.jpgl").write_text("\n".join([*ids[-tests:], "999999999"]) + "\n")
    rng = np.random.default_rng(0)
    for r in rows:
        counts = np.array(r[2:12], dtype=float)
        mean = (counts * np.arange(1, 11)).sum() / counts.sum()
        pixels = np.clip(rng.normal(25 * mean, 30, (32, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{r[1]}.jpg", quality=90)
    return ids[:-tests], ids[-tests:]


def run_ava(ava: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(ava), "--device", "cpu", "--arch", "resnet18",
                           "--weights", "none", "--size", "32", "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_ava_runs_every_stage_then_skips_them_all(tmp_path: Path) -> None:
    train_ids, test_ids = make_ava(tmp_path / "AVA")
    out = tmp_path / "run"
    first = run_ava(tmp_path / "AVA", out)
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    # Up front: what it needs (40 images at 32 px, jpeg ~22 % of 32 * 32 * 3 bytes each), and the device
    assert f"ava: disk: about {40 * 32 * 32 * 3 * 0.22 / 1e3:.1f} KB" in log
    assert "30 to train on" in log and "estimated" in log and "CPU" in log
    for command in ("uiaa labels", "uiaa cache", "uiaa train", "uiaa predict", "uiaa evaluate"):
        assert f"$ {command}" in log, command
    assert "complete, skipped" not in log

    # The split is AVA's: the test list's ids, and the rest
    import pandas as pd

    train, test = (pd.read_csv(out / f"{side}.csv", dtype={"image": str}) for side in ("train", "test"))
    assert sorted(test["image"]) == sorted(test_ids) and sorted(train["image"]) == sorted(train_ids)
    run = out / "runs" / "resnet18-none-32px-gauss-mv-lam0.5-ce-1ep"
    preds = pd.read_csv(run / "test-preds.csv", dtype={"image": str})
    assert sorted(preds["image"]) == sorted(test_ids)
    metrics = json.loads((run / "test-metrics.json").read_text())
    assert metrics["images"] == len(test_ids)
    # The row's SRCC is the test set's, computed here independently from the two tables
    joined = preds.merge(test, on="image")
    srcc = joined["score"].rank().corr(joined["mean"].rank())
    assert abs(metrics["metrics"]["srcc"] - srcc) < 1e-9

    row = next(line for line in first.stdout.splitlines() if line.startswith("this run"))
    paper = next(line for line in first.stdout.splitlines() if line.startswith("paper"))
    assert f"{metrics['metrics']['srcc']:.3f}" in row and row.split()[-2] == "1"  # 1 epoch
    assert "Table III" in first.stdout
    # The paper's published ResNet-50 row beside it (this run is a resnet18: said so)
    assert paper.split()[2:8] == ["80.35%", "0.714", "0.716", "-", "-", "0.066"] and "0.247" in paper
    assert "ResNet-50's; this run is resnet18" in first.stdout

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = run_ava(tmp_path / "AVA", out)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    for stage in STAGES:
        assert f"[{stage}] complete, skipped" in log, stage
    assert "$ uiaa" not in log  # no command ran
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert row in second.stdout
