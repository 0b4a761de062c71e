"""The CUDA speed paths of train (fused SGD, torch.compile, GPU JPEG decoding, workers) as the CPU can
check them: their choices, and that on the CPU nothing changes (the suite's figures stay bit-identical)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uiaa_cli.errors import UiaaError
from uiaa_cli.training import runtime
from uiaa_cli.training.data import CacheSource, epoch_batches

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.fixture(scope="module")
def jpeg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images in a jpeg cache at 32 px, built by the library (as 'uiaa cache' does)."""
    from uiaa_cli.pixels.cache_build import build_cache
    from uiaa_cli.tables.writers import write_table
    from uiaa_cli.targets.labels import LabelSettings, build_labels

    folder = tmp_path_factory.mktemp("speed")
    rng = np.random.default_rng(0)
    names = [f"{i}.jpg" for i in range(12)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name, quality=90)
    counts = rng.integers(1, 20, (12, 10))
    table, _ = build_labels(np.array(names), counts, np.arange(1, 11, dtype=float), LabelSettings())
    write_table(table, folder / "labels.csv")
    build_cache(folder / "labels.csv", folder, folder / "cache.h5", size=32, workers=1, progress=False)
    return folder / "cache.h5"


def test_choices_leave_the_cpu_path_alone() -> None:
    assert not runtime.compile_wanted("auto", CPU) and runtime.compile_wanted("auto", CUDA)
    assert runtime.compile_wanted("on", CPU) and not runtime.compile_wanted("off", CUDA)
    assert runtime.decode_device("auto", CUDA, True) is None and runtime.decode_device("cpu", CUDA, True) is None
    assert runtime.decode_device("gpu", CUDA, True) == CUDA
    with pytest.raises(UiaaError, match="CUDA device"):
        runtime.decode_device("gpu", CPU, True)
    with pytest.raises(UiaaError, match="jpeg cache"):
        runtime.decode_device("gpu", CUDA, False)
    import os

    assert runtime.default_workers() == min(32, len(os.sched_getaffinity(0)))


def test_cpu_optimiser_is_torch_default_and_a_cuda_checkpoint_loads_on_cpu() -> None:
    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(5, 3)

    def one_step(m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        torch.manual_seed(1)
        opt.zero_grad()
        m(torch.randn(4, 5)).square().sum().backward()
        opt.step()

    ours, ref = model(), model()
    opt = runtime.make_optimizer(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, device=CPU)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is None
    for _ in range(2):
        one_step(ours, opt), one_step(ref, ref_opt)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    # A state saved by a CUDA run carries fused=True; fitted to the CPU it steps as torch's default.
    saved = opt.state_dict()
    saved["param_groups"][0]["fused"] = True
    opt.load_state_dict(saved)
    runtime.fit_optimizer(opt, CPU)
    assert opt.param_groups[0]["fused"] is None
    one_step(ours, opt), one_step(ref, ref_opt)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    runtime.fit_optimizer(opt, CUDA)
    assert opt.param_groups[0]["fused"] is True


def test_device_decoding_gives_the_loader_batches(jpeg_cache: Path) -> None:
    # decode_jpeg on the CPU is libjpeg-turbo, as Pillow: the same pixels, so this checks the bytes
    # each row gets (runs of consecutive rows, gaps, order) and the NHWC layout Normalise expects.
    batches = epoch_batches(12, 5, 0, 0)
    source = CacheSource(str(jpeg_cache), workers=0)
    device = CacheSource(str(jpeg_cache), decode_on=CPU)
    try:
        ref = list(source.batches(batches))
        got = list(device.batches(batches))
        assert len(got) == len(ref) == len(batches)
        for (p, rows), (q, ref_rows) in zip(got, ref):
            assert np.array_equal(rows, ref_rows) and p.shape == q.shape and p.is_contiguous()
            assert torch.equal(p, q)
    finally:
        source.close(), device.close()


def test_trainer_on_cpu_steps_the_eager_network_with_torch_sgd(jpeg_cache: Path, tmp_path: Path) -> None:
    from uiaa_cli.training.runtime import Dist
    from uiaa_cli.training.settings import TrainSettings
    from uiaa_cli.training.trainer import Trainer

    settings = TrainSettings(data=str(jpeg_cache), arch="resnet18", weights="none", epochs=1, device="cpu",
                             out=str(tmp_path / "run"), quiet=True)
    trainer = Trainer(settings, Dist())
    try:
        assert trainer.step_net is trainer.net
        assert type(trainer.optimizer) is torch.optim.SGD and trainer.optimizer.param_groups[0]["fused"] is None
        assert trainer.data.source.decode_on is None
    finally:
        trainer.close()
    with pytest.raises(UiaaError, match="choose one of auto, on, off"):
        TrainSettings(data=str(jpeg_cache), compile="sometimes").check()


def test_compile_auto_that_cannot_build_trains_eagerly_and_says_so(
        jpeg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # As on a CUDA machine whose torch.compile lacks Triton: auto falls back with a line, on is an error.
    from uiaa_cli.training import trainer as trainer_module
    from uiaa_cli.training.report import Reporter
    from uiaa_cli.training.runtime import Dist
    from uiaa_cli.training.settings import TrainSettings

    monkeypatch.setattr(trainer_module, "compile_wanted", lambda setting, device: setting != "off")
    monkeypatch.setattr(runtime, "compile_problem", lambda device: "no Triton here")
    monkeypatch.setattr(trainer_module, "compile_problem", lambda device: "no Triton here")
    settings = TrainSettings(data=str(jpeg_cache), arch="resnet18", weights="none", epochs=1, device="cpu",
                             out=str(tmp_path / "run"), workers=0)
    trainer = trainer_module.Trainer(settings, Dist())
    try:
        assert trainer.step_net is trainer.net
        trainer.run(Reporter(True, False))
    finally:
        trainer.close()
    assert "torch.compile cannot run on cpu here (no Triton here); training eagerly" in capsys.readouterr().err
    with pytest.raises(UiaaError, match="--compile on: .*no Triton here"):
        trainer_module.Trainer(TrainSettings(data=str(jpeg_cache), arch="resnet18", weights="none", epochs=1,
                                             device="cpu", out=str(tmp_path / "on"), compile="on"), Dist())
