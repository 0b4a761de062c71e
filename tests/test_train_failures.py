"""Training that fails, fails loudly (issue 23): too many missing images stop ``train`` before torch
loads, a NaN validation epoch is never ``best.pt``, and a run without a sound epoch exits 1 with
``last.pt`` kept, no ``best.pt`` and no ``latest`` naming it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import typer
from test_training import FAST, make_dataset, same_weights

from uiaa_cli.models.networks import load_checkpoint
from uiaa_cli.tables.table import read_table
from uiaa_cli.training import trainer as trainer_module
from uiaa_cli.training.report import summary_lines
from uiaa_cli.training.run_data import split_rows
from uiaa_cli.training.settings import SELECT_RULES, TrainSettings, best_epoch

KEPT = 10  # of the 100 images the partial table names, only these exist (all of them training images)


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labels table naming 100 images of which only 10 training images exist (the split of seed 0
    holds the other 90 and all 10 validation images)."""
    labels = make_dataset(tmp_path_factory.mktemp("partial"), 100, seed=5)
    _, val_rows = split_rows(100, 0.1, 0)
    kept = [row for row in range(100) if row not in set(val_rows)][:KEPT]
    for row in range(100):
        if row not in kept:
            (labels.parent / "img" / f"{row:04d}.png").unlink()
    return labels


def test_too_many_missing_images_stop_before_torch_loads(partial: Path, tmp_path: Path, uiaa, no_torch: dict,
                                                         torch_attempts) -> None:
    done = uiaa("train", partial, *FAST, "--out", tmp_path / "run", env=no_torch)
    text = done.stderr.decode()
    assert done.returncode == 1, text
    assert text.count("\n") == 1 and text.startswith(f"uiaa train: error: {partial}: "), text
    assert "90 of the 100 images named (90%) cannot be found" in text and "--max-missing 0.05" in text, text
    gone = [f"'img/{row:04d}.png'" for row in range(100)
            if not (partial.parent / "img" / f"{row:04d}.png").exists()]
    assert ", ".join(gone[:5]) + ", ..." in text, text  # the first missing names, in table order
    assert torch_attempts() == 0 and not (tmp_path / "run").exists()  # refused before torch and any work
    # The share is validated before any work too (a usage error).
    done = uiaa("train", partial, *FAST, "--max-missing", "1.5", env=no_torch)
    assert done.returncode == 2 and "must lie in [0, 1]" in done.stderr.decode()
    # A cache: "missing" is what its build could not decode (its skipped table).
    cache = tmp_path / "partial.h5"
    built = uiaa("cache", partial, "-o", cache, "--size", "32", "--workers", "1", "--store", "raw", "-q")
    assert built.returncode == 1 and cache.exists(), built.stderr
    done = uiaa("train", cache, *FAST, "--out", tmp_path / "run", env=no_torch)
    text = done.stderr.decode()
    assert done.returncode == 1 and "90 of the 100 images named (90%) could not be decoded" in text, text
    assert torch_attempts() == 0


def test_all_missing_allowed_trains_then_fails_without_best(partial: Path, tmp_path: Path, uiaa) -> None:
    """--max-missing 1: the 10 images train (one batch), none of the validation images exists, so no
    epoch can be judged: exit 1, last.pt kept, no best.pt, and runs/latest back at the older run."""
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "latest").symlink_to("old", target_is_directory=True)
    done = uiaa("train", partial, *FAST, "--epochs", "1", "--batch-size", "100", "--max-missing", "1",
                "--out", runs / "run")
    text = done.stderr.decode()
    assert done.returncode == 1, text
    lines = text.strip().splitlines()
    assert "90 of the 100 images named in" in lines[0] and "are missing (left out)" in lines[0], lines[0]
    assert lines[-1].startswith("uiaa train: error: no epoch gave a usable model: none of the 10 validation "
                                "images could be read"), lines[-1]
    assert "best model" not in text and "best.pt  epoch" not in text and "Traceback" not in text
    assert sorted(p.name for p in (runs / "run").iterdir()) == ["last.pt", "metrics.csv"]
    assert os.readlink(runs / "latest") == "old"


def test_best_is_picked_among_sound_epochs_only() -> None:
    nan, inf = math.nan, math.inf
    history = [{"epoch": 1, "val_loss": 1.8, "srcc": 0.50}, {"epoch": 2, "val_loss": nan, "srcc": 0.99},
               {"epoch": 3, "val_loss": 1.9, "srcc": 0.60}, {"epoch": 4, "val_loss": inf, "srcc": 0.70}]
    # by hand: last sound epoch 3; lowest finite loss epoch 1; highest sound SRCC epoch 3; smooth:
    # epoch 1 .50, epoch 3 mean(.50, .60) = .55 (epoch 2's .99 neither counts nor lifts epoch 3)
    picks = {rule: history[best_epoch(history, rule)]["epoch"] for rule in SELECT_RULES}
    assert picks == {"last": 3, "loss": 1, "srcc": 3, "smooth": 3}
    diverged = [{"epoch": 1, "val_loss": nan, "srcc": 0.5}, {"epoch": 2, "val_loss": inf, "srcc": 0.6}]
    assert all(best_epoch(diverged, rule) is None for rule in SELECT_RULES)
    assert [line.split()[2] for line in summary_lines(diverged, "last")] == ["last.pt"]  # no best.pt line
    unread = [{"epoch": e, "val_loss": None, "srcc": None} for e in (1, 2)]
    assert best_epoch(unread, "last", validated=True) is None  # validation images, none read
    assert best_epoch(unread, "last", validated=False) == 1  # no validation at all: best is last
    flat = [{"epoch": 1, "val_loss": 2.0, "srcc": None}]  # a finite loss, an SRCC that cannot be computed
    assert best_epoch(flat, "loss") == 0 and best_epoch(flat, "srcc") is None


def settings_for(data: Path, out: Path, epochs: int, **kw: object) -> TrainSettings:
    return TrainSettings(data=str(data), arch="resnet18", weights="none", size=16, device="cpu", workers=0,
                         batch_size=32, epochs=epochs, lr=(0.02, 0.01), out=str(out), **kw)  # 1 step an epoch


def poison(monkeypatch: pytest.MonkeyPatch, epochs: set[int] | None, srcc: float | None = None) -> None:
    """Validation of ``epochs`` (1-based; None: every epoch) reports a NaN loss (and ``srcc``, if given:
    a SRCC that looks fine, as NaN scores can give)."""
    real, calls = trainer_module.val_metrics, []

    def nan_validation(*args: object, **kw: object) -> dict:
        result = real(*args, **kw)
        calls.append(1)
        if epochs is None or len(calls) in epochs:
            result["val_loss"] = math.nan
            if srcc is not None:
                result["srcc"] = srcc
        return result

    monkeypatch.setattr(trainer_module, "val_metrics", nan_validation)


@pytest.fixture(scope="module")
def few(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("few"), 28, seed=3)  # 25 training, 3 validation images


def test_a_nan_epoch_is_never_best(few: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    # --select srcc, epoch 2 NaN with the highest SRCC: best.pt is the better of epochs 1 and 3.
    poison(monkeypatch, {2}, srcc=0.99)
    out = trainer_module.train(settings_for(few, tmp_path / "srcc", 3, select="srcc", quiet=True))
    history = read_table(out / "metrics.csv")
    assert math.isnan(history["val_loss"][1]) and history["srcc"][1] == 0.99
    want = 3 if history["srcc"][2] >= history["srcc"][0] else 1  # ties go to the later epoch
    _, config, _ = load_checkpoint(out / "best.pt")
    assert config["epoch"] == want and math.isfinite(config["metrics"]["val_loss"])
    # --select last, the last epoch NaN: best.pt keeps epoch 1, and the summary says so.
    poison(monkeypatch, {2})
    capsys.readouterr()
    out = trainer_module.train(settings_for(few, tmp_path / "last", 2))
    assert "uiaa train: best.pt  epoch 1  val loss " in capsys.readouterr().err
    assert load_checkpoint(out / "best.pt")[1]["epoch"] == 1 and load_checkpoint(out / "last.pt")[1]["epoch"] == 2
    assert not same_weights(out / "best.pt", out / "last.pt")


def test_every_epoch_nan_exits_1_with_last_kept(few: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    from uiaa_cli.cli.train import train as train_command

    poison(monkeypatch, None)
    with pytest.raises(typer.Exit) as ended:  # the command, in-process (the NaN is injected): one line, exit 1
        train_command(data=str(few), arch="resnet18", weights="none", size=32, device="cpu", workers=0,
                      batch_size=32, epochs=1, out=str(tmp_path / "runs" / "run"))
    assert ended.value.exit_code == 1
    text = capsys.readouterr().err
    assert "best model" not in text and "best.pt  epoch" not in text and "val loss nan" in text
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("uiaa train: error: no epoch gave a usable model: the "
                                                     "validation loss was not finite in any epoch (nan)")
    assert "lower --lr" in errors[0] and "last.pt is kept" in errors[0]
    assert sorted(p.name for p in (tmp_path / "runs" / "run").iterdir()) == ["last.pt", "metrics.csv"]
    assert not os.path.lexists(tmp_path / "runs" / "latest")  # it named nothing before this run
