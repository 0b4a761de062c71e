"""``uiaa train`` on tiny generated images: losses fall, the model learns, resume, NaN, DDP on gloo.

The data set: 32 px images whose brightness sets the mean vote (AVA-like counts of 60 votes over
1..10 from a Gaussian around ``2 + 6 * brightness``), labelled by the real ``uiaa labels``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_uiaa
from PIL import Image

from uiaa_cli.errors import UiaaError
from uiaa_cli.losses import LOSSES, loss_function
from uiaa_cli.models.networks import (
    CHECKPOINT_FORMAT,
    build_model,
    load_checkpoint,
    save_checkpoint,
    start_linear_head_at,
)
from uiaa_cli.tables.table import read_table

FAST = ["--arch", "resnet18", "--weights", "none", "--size", "32", "--device", "cpu", "--workers", "0",
        "--batch-size", "16"]


def make_dataset(folder: Path, n: int, size: int = 32, seed: int = 0, kind: str = "gauss-mv") -> Path:
    """Images in ``folder/img`` and ``folder/labels.csv`` made by ``uiaa labels`` from a counts table."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 1, n)
    tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3))
    base = 30 + 190 * brightness[:, None, None, None] * tint
    pixels = np.clip(base + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
    names = [f"img/{i:04d}.png" for i in range(n)]
    for name, p in zip(names, pixels, strict=True):
        Image.fromarray(p).save(folder / name)
    bins = np.arange(1, 11)
    p = np.exp(-(bins[None] - (2 + 6 * brightness)[:, None]) ** 2 / (2 * 1.3**2))
    counts = rng.multinomial(60, p / p.sum(axis=1, keepdims=True))
    lines = ["image," + ",".join(map(str, bins))]
    lines += [name + "," + ",".join(map(str, c)) for name, c in zip(names, counts, strict=True)]
    (folder / "counts.csv").write_text("\n".join(lines) + "\n")
    labels = folder / f"labels-{kind}.csv"
    done = run_uiaa("labels", folder / "counts.csv", "--kind", kind, "-o", labels)
    assert done.returncode == 0, done.stderr
    return labels


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 images with a strong signal, gauss-mv labels."""
    return make_dataset(tmp_path_factory.mktemp("signal"), 160)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 images for runs that only need to be quick."""
    return make_dataset(tmp_path_factory.mktemp("small"), 64, seed=1)


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights_of(a), weights_of(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def train(*args: object, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``uiaa train ARGS`` in a subprocess; stderr as text."""
    done = run_uiaa("train", *map(str, args), cwd=cwd, env=env, timeout=300)
    done.stderr = done.stderr.decode(errors="replace")
    return done


# ------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("outputs", [2, 10], ids=["2-set", "M-set"])
@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_and_target_shape_trains(name: str, outputs: int) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.randn(8, 3, 32, 32)
    y = torch.from_numpy(rng.dirichlet(np.ones(outputs), 8)).float()
    model = build_model("resnet18", outputs, "none").train()
    # From scratch, linear heads start far from the targets and want a smaller step than softmax ones.
    lr = 1e-2 if name in ("ce", "emd") else 1e-3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = loss_function(name)
    # The lowest reachable loss: ce cannot fall below the targets' entropy.
    floor = loss_fn(torch.log(y), y).item() if name in ("ce", "emd") else 0.0
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert min(losses[-2:]) - floor < 0.75 * (losses[0] - floor), (floor, losses)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large"])
def test_a_linear_head_starts_at_the_mean_target(arch: str) -> None:
    torch.manual_seed(0)
    mean = np.array([0.02, 0.05, 0.1, 0.2, 0.26, 0.2, 0.1, 0.05, 0.01, 0.01])
    model = build_model(arch, 10, "none").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        start_linear_head_at(model, arch, mean)
        after = model(x)
    assert (before - torch.from_numpy(mean).float()).abs().max() > 0.1  # a random head is far off
    assert torch.allclose(after, torch.from_numpy(mean).float().expand(4, 10), atol=0.02)
    if arch == "resnet18":  # (mobilenet's own init makes its head's weights too small to show it)
        assert not torch.equal(after[0], after[1])  # and still depends on the picture


# ----------------------------------------------------------------------------- the real command


def test_learns_the_signal_and_the_checkpoint_is_enough_to_predict(data: Path, tmp_path: Path) -> None:
    done = train(data, *FAST, "--epochs", "3", "--lr", "0.05,0.01", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = tmp_path / "runs"
    latest = runs / "latest"
    assert latest.exists()
    out = runs / (os.readlink(latest) if latest.is_symlink() else latest.read_text().strip())
    assert out.name.startswith("resnet18-gauss-mv-ce-")
    history = read_table(out / "metrics.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert {"train_loss", "val_loss", "srcc", "pcc", "accuracy", "kl", "emd", "images_per_s"} <= set(history.names)
    print("validation SRCC by epoch:", history["srcc"])
    assert np.nanmax(history["srcc"]) > 0.6, history["srcc"]
    assert "epoch 3/3" in done.stderr and "SRCC" in done.stderr

    model, config, payload = load_checkpoint(out / "best.pt")  # torch.load(weights_only=True) inside
    assert config["arch"] == "resnet18" and config["size"] == 32 and config["kind"] == "gauss-mv"
    assert config["activation"] == "softmax" and config["bins"] == list(map(float, range(1, 11)))
    # best.pt holds the epoch of --select's default rule (last; tests/test_select.py tries the others)
    assert len(config["targets"]) == 10 and config["metrics"]["srcc"] == pytest.approx(history["srcc"][-1])
    assert "optimizer" not in payload  # best.pt holds weights and config only
    # The checkpoint alone scores images: brighter images must score higher.
    dark = np.full((1, 32, 32, 3), 40, dtype=np.uint8)
    bright = np.full((1, 32, 32, 3), 200, dtype=np.uint8)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.concatenate([dark, bright])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        probs = torch.softmax(model((x - mean) / std), 1).numpy()
    scores = probs @ np.array(config["bins"])
    assert scores[1] > scores[0]


def test_linear_head_with_two_set_targets(small: Path, tmp_path: Path) -> None:
    soft = make_dataset(tmp_path / "soft", 48, seed=2, kind="soft")
    (tmp_path / "soft" / "img" / "0005.png").unlink()  # unreadable images are named, and left out
    (tmp_path / "soft" / "img" / "0007.png").write_text("not a picture")
    done = train(soft, *FAST, "--epochs", "1", "--loss", "huber", "--lr", "1e-3,1e-3", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    # 0005 is held out for validation (the split of seed 0), 0007 is a training image.
    assert "left out of the validation images img/0005.png: no such image" in done.stderr, done.stderr
    assert "left out img/0007.png: not an image" in done.stderr, done.stderr
    assert not done.stdout  # stdout stays clean: everything for people is on stderr
    _, config, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    assert config["activation"] == "linear" and config["targets"] == ["p_low", "p_high"]
    assert config["kind"] == "soft" and config["loss"] == "huber"
    history = read_table(tmp_path / "run" / "metrics.csv")
    assert np.isnan(history["kl"]).all()  # KL/EMD apply to softmax distributions only


RESUME_ARGS = [*FAST, "--epochs", "2", "--lr", "0.02,0.01"]


@pytest.fixture(scope="module")
def whole_run(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run never stopped, to compare stopped and resumed runs with."""
    out = tmp_path_factory.mktemp("whole") / "run"
    done = train(small, *RESUME_ARGS, "--out", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("lag", [0, 1])
def test_resume_after_a_stop_gives_the_same_weights(small: Path, whole_run: Path, tmp_path: Path, lag: int) -> None:
    # 57 training images in batches of 16: 4 steps an epoch; stop in the middle of epoch 2. With the
    # totals read a step late (CUDA's way), the stop comes a step later and every step taken is counted.
    env = {"UIAA_STOP_AFTER_STEPS": "6", "UIAA_READBACK_LAG": str(lag)}
    stopped = train(small, *RESUME_ARGS, "--out", tmp_path / "part", env=env)
    assert stopped.returncode == 130, stopped.stderr
    assert "--resume" in stopped.stderr and f"step {2 + lag}:" in stopped.stderr
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert (state["resume"]["epoch"], state["resume"]["step"]) == (1, 2 + lag)
    again = train(small, "--resume", tmp_path / "part", "--device", "cpu", "--workers", "0")
    assert again.returncode == 0, again.stderr
    assert same_weights(whole_run / "last.pt", tmp_path / "part" / "last.pt")
    a = read_table(whole_run / "metrics.csv")
    b = read_table(tmp_path / "part" / "metrics.csv")
    assert np.allclose(a["train_loss"], b["train_loss"]) and np.allclose(a["srcc"], b["srcc"])
    finished = train("--resume", tmp_path / "part")
    assert finished.returncode == 0 and "already finished" in finished.stderr


def test_sigint_saves_a_resumable_checkpoint(small: Path, whole_run: Path, tmp_path: Path) -> None:
    # Decoding in a worker process this time: the pixels, and so the weights, are the same.
    args = [small, *RESUME_ARGS, "--workers", "1", "--out", tmp_path / "part"]
    proc = subprocess.Popen([sys.executable, "-m", "uiaa_cli", "train", *map(str, args)],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "epoch 1/2" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "interrupted" in rest
    again = train(small, "--resume", tmp_path / "part")
    assert again.returncode == 0, again.stderr
    assert same_weights(whole_run / "last.pt", tmp_path / "part" / "last.pt")


def test_a_cache_trains_exactly_like_its_labels_table(small: Path, whole_run: Path, tmp_path: Path) -> None:
    cache = tmp_path / "small.h5"
    done = run_uiaa("cache", small, "-o", cache, "--size", "32", "--workers", "1", "--store", "raw")
    assert done.returncode == 0, done.stderr
    trained = train(cache, *RESUME_ARGS, "--out", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr
    assert same_weights(whole_run / "last.pt", tmp_path / "run" / "last.pt")
    wrong = train(cache, *RESUME_ARGS, "--size", "48", "--out", tmp_path / "never")
    assert wrong.returncode == 2 and "holds 32 px images" in wrong.stderr


@pytest.mark.parametrize("lag", [0, 1])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small: Path, tmp_path: Path, lag: int) -> None:
    done = train(small, *FAST, "--epochs", "2", "--loss", "mse", "--lr", "1e-3,1e30", "--out", tmp_path / "run",
                 env={"UIAA_READBACK_LAG": str(lag)})
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert "loss became" in message and "epoch 2" in message and "last.pt" in message
    assert "Traceback" not in done.stderr
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["config"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_user_errors_are_one_line(small: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"  # another architecture's checkpoint
    save_checkpoint(other, build_model("mobilenet_v3_large", 10, "none"), {"arch": "mobilenet_v3_large"})
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    from typer.testing import CliRunner

    from uiaa_cli.cli.app import app

    done = train(small, *FAST, "--weights", other, "--epochs", "1", "--out", tmp_path / "never")  # the real command
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("uiaa train: error: ") and "does not fit resnet18" in done.stderr, done.stderr
    done = train(small, *FAST, "--lr", "fast", "--epochs", "1", "--out", tmp_path / "never")  # a usage error: main()
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--lr" in done.stderr, done.stderr
    # The other cases in this process (the same app and error handling, without 4 s of torch start-up each)
    for args, words in (
        ([small, *FAST, "--weights", broken], "not a readable checkpoint"),
        ([tmp_path / "missing.csv", *FAST], "no such file"),
        (["--resume", tmp_path], "no last.pt here"),
        (["--resume", broken], "not a readable checkpoint"),
    ):
        result = CliRunner().invoke(app, ["train", *map(str, args), "--epochs", "1", "--out", str(tmp_path / "never")])
        assert result.exit_code == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "never").exists()


def test_imagenet_weights_offline_are_a_clear_error(small: Path, tmp_path: Path) -> None:
    # An empty TORCH_HOME and no network (UIAA tests never download): the download fails at once.
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY":
           "http://127.0.0.1:9"}
    args = [a for a in FAST if a not in ("--weights", "none")]
    done = run_uiaa("train", small, *args, "--epochs", "1", "--out", tmp_path / "never", env=env, timeout=120)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("uiaa train: error: cannot load the ImageNet weights of resnet18"), stderr
    assert "--weights none" in message and "--weights PATH" in message and "resnet18-" in message, message
    assert not (tmp_path / "never").exists()


def test_imagenet_download_cannot_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import urllib.error

    import torchvision

    seen = []

    def stalled(**kwargs: object) -> None:  # what a firewall that drops packets looks like, at once
        seen.append(socket.getdefaulttimeout())
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(torchvision.models, "resnet18", stalled)
    with pytest.raises(UiaaError, match=r"cannot load the ImageNet weights of resnet18 \(URLError.*--weights none"):
        build_model("resnet18", 2, "imagenet")
    assert seen and seen[0] is not None and seen[0] <= 60  # the download had a timeout
    assert socket.getdefaulttimeout() is None  # and it was put back


def test_weights_of_another_architecture_or_corrupted(tmp_path: Path) -> None:
    state = build_model("resnet18", 10, "none").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # as in a bottleneck ResNet
    other = tmp_path / "other.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"arch": "resnet50"}, "model": state}, other)
    with pytest.raises(UiaaError, match=r"does not fit resnet18 \(a resnet50 checkpoint\): 1 weights of another "
                                        r"shape.*layer1\.0\.conv1\.weight"):
        build_model("resnet18", 10, str(other))
    with pytest.raises(UiaaError, match="corrupted uiaa checkpoint"):
        load_checkpoint(other)  # its config lacks targets and size
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("resnet18", 2, "none"), {"arch": "resnet18", "targets": ["p_low", "p_high"],
                                                                "size": 32})
    assert len(load_checkpoint(good)[1]["targets"]) == 2
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100_000])
    for load in (load_checkpoint, lambda p: build_model("resnet18", 2, str(p))):
        with pytest.raises(UiaaError, match="truncated.pt: not a readable checkpoint.*corrupted") as e:
            load(truncated)
        assert "\n" not in str(e.value)


def test_no_readable_image_is_an_error_not_a_nan(small: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = train(small, *FAST, "--images", tmp_path / "empty", "--epochs", "1", "--out", tmp_path / "run")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "nan" not in done.stderr
    # Nothing resolves under --images: one error before any work, not a line per image.
    assert done.stderr.count("\n") == 1 and "none of the 64 images" in done.stderr, done.stderr
    assert done.stderr.startswith("uiaa train: error:")


@pytest.mark.parametrize("command", ["cache", "train"])
def test_help_has_examples(command: str) -> None:
    done = run_uiaa(command, "--help", timeout=60)
    text = done.stdout.decode()
    assert done.returncode == 0 and "Examples:" in text and f"uiaa {command} " in text.split("Examples:")[1]


def test_torchrun_two_processes_on_gloo(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "uiaa_cli", "train", str(small), *FAST, "--epochs", "2", "--lr", "0.02,0.01", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    history = read_table(out / "metrics.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert np.all(np.isfinite(history["srcc"]))
    model, config, payload = load_checkpoint(out / "last.pt")
    assert config["epoch"] == 2 and payload["resume"]["epoch"] == 2
    assert done.stderr.count("epoch 2/2") == 1  # only rank 0 reports
