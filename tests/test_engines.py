"""Model engines: ONNX Runtime and torch give the scores of an independent float64 forward pass; the
exported graph is made once, reused while it matches the checkpoint, and never needs torch to run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from conftest import REPO, run_uiaa
from PIL import Image

from uiaa_cli.models import devices, engines, graphs
from uiaa_cli.tables.table import read_table

SIZE = 32
# ImageNet's normalisation written out here, so the reference below does not read uiaa's constants.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_checkpoint(path: Path, seed: int, outputs: int = 10) -> Path:
    """An untrained resnet18 with a fixed seed, its last layer scaled 10x so the outputs are far from
    uniform: scores spread over the scale, so a wrong preprocessing or head shows in the scores."""
    import torch

    from uiaa_cli.models import networks as models

    torch.manual_seed(seed)
    net = models.build_model("resnet18", outputs, "none")
    with torch.no_grad():
        net.fc.weight.mul_(10)
        net.fc.bias.mul_(10)
    targets = ["p_low", "p_high"] if outputs == 2 else [f"p_{i}" for i in range(1, 11)]
    config = models.make_config(arch="resnet18", size=SIZE, bins=list(range(1, 11)),
                                kind="binary" if outputs == 2 else "gauss-mv", targets=targets, loss="ce")
    models.save_checkpoint(path, net, config)
    return path


def reference(checkpoint: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score and outputs by a plain torchvision resnet18 in float64, normalised by hand (no uiaa code)."""
    import torch
    import torchvision

    state = torch.load(checkpoint, weights_only=True)
    outputs = len(state["config"]["targets"])
    net = torchvision.models.resnet18(num_classes=outputs)
    net.load_state_dict(state["model"])
    net.double().eval()
    x = torch.from_numpy(pixels).double().permute(0, 3, 1, 2) / 255
    x = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(
        1, 3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1).numpy()
    weights = np.arange(1.0, 11.0) if outputs == 10 else np.array([0.0, 10.0])  # SPEC §1: 2-set is b_M p_high
    return probs @ weights, probs


def golden_pixels(n: int = 8) -> np.ndarray:
    """``n`` fixed 32x32 pictures: gradients, stripes, a checkerboard, flat colours, noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    rng = np.random.default_rng(1234)
    out = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        r = (x * (8 * i + 1)) % 256
        g = (y * (3 * i + 2) + 40 * i) % 256
        b = ((x // (i + 1) + y // (i + 1)) % 2) * 255
        picture = np.stack([r, g, b], axis=-1)
        if i % 3 == 2:
            picture = picture * 0.5 + rng.integers(0, 128, picture.shape)
        out[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("engines")
    pixels = golden_pixels()
    golden = root / "golden"
    golden.mkdir()
    for i, picture in enumerate(pixels):  # PNG at the model's size: decoded to exactly these pixels
        Image.fromarray(picture).save(golden / f"g{i}.png")
    resized = root / "resized"  # JPEGs of another size and shape: the resize is part of what must agree
    resized.mkdir()
    rng = np.random.default_rng(7)
    for i in range(4):
        big = np.kron(pixels[i], np.ones((2, 3, 1), dtype=np.uint8)) // 2 + rng.integers(0, 100, (64, 96, 3),
                                                                                           dtype=np.uint8)
        Image.fromarray(big).save(resized / f"r{i}.jpg", quality=85)
    model = make_checkpoint(root / "m.pt", seed=5)
    graph = graphs.exported_graph(model, note=lambda message: None)
    return {"root": root, "pixels": pixels, "golden": golden, "resized": resized, "model": model, "graph": graph}


def predict_lines(*args: str, env: dict | None = None) -> dict[str, float]:
    result = run_uiaa("predict", *args, env=env)
    assert result.returncode == 0, result.stderr
    return scores_of(result)


def scores_of(result: subprocess.CompletedProcess) -> dict[str, float]:
    """``path<TAB>score`` lines as {file name: score}."""
    return {Path(line.split("\t")[0]).name: float(line.split("\t")[1]) for line in result.stdout.decode().splitlines()}


# ------------------------------------------------------------------------------------- same scores


def test_both_engines_give_the_golden_scores(setup, tmp_path: Path):
    """The real command on both engines against an independent float64 forward pass: within 1e-4."""
    want_score, want_probs = reference(setup["model"], setup["pixels"])
    assert np.ptp(want_score) > 1.0  # the check is sharp: scores spread over the scale
    tables = {}
    for engine in ("onnx", "torch"):
        out = tmp_path / f"{engine}.csv"
        result = run_uiaa("predict", setup["golden"], setup["resized"], "-m", setup["model"], "--engine", engine,
                          "-o", out, "--batch-size", "3")
        assert result.returncode == 0, result.stderr
        assert b"exporting" not in result.stderr  # the graph made by the fixture is reused
        tables[engine] = table = read_table(out)
        names = [Path(p).name for p in table["image"]]
        golden = [names.index(f"g{i}.png") for i in range(len(setup["pixels"]))]
        np.testing.assert_allclose(table["score"][golden], want_score, atol=1e-4, rtol=0)
        np.testing.assert_allclose(table.matrix([f"p_{i}" for i in range(1, 11)])[golden], want_probs, atol=1e-5,
                                   rtol=0)
        std = np.sqrt((want_probs * (np.arange(1, 11) - want_score[:, None]) ** 2).sum(1))
        np.testing.assert_allclose(table["std"][golden], std, atol=1e-4, rtol=0)
    # The resized JPEGs too: both engines see the same pixels (the same resize), so the same scores.
    assert list(tables["onnx"]["image"]) == list(tables["torch"]["image"])
    np.testing.assert_allclose(tables["onnx"]["score"], tables["torch"]["score"], atol=1e-4, rtol=0)


def test_batch_size_does_not_change_the_scores(setup):
    """One batch of 64 against 64 batches of 1, on each engine: within 1e-5; a 2-set model too."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    for name in ("onnx", "torch"):
        engine = engines.open_engine(str(setup["model"]), name, "cpu", note=pytest.fail)
        assert engine.name == name and engine.device == "cpu" and engine.config["size"] == SIZE
        assert engine.model == str(setup["graph"] if name == "onnx" else setup["model"])
        score, probs = engine(pixels)
        assert score.dtype == probs.dtype == np.float64 and score.shape == (64,) and probs.shape == (64, 10)
        one = np.concatenate([engine(pixels[i:i + 1])[0] for i in range(64)])
        np.testing.assert_allclose(one, score, atol=1e-5, rtol=0)
        np.testing.assert_allclose(score, reference(setup["model"], pixels)[0], atol=1e-4, rtol=0)
        empty_score, empty_probs = engine(pixels[:0])
        assert empty_score.shape == (0,) and empty_probs.shape == (0, 10)
    two = make_checkpoint(setup["root"] / "two.pt", seed=9, outputs=2)
    want = reference(two, pixels[:8])[0]
    for name in ("onnx", "torch"):
        score, probs = engines.open_engine(str(two), name, "cpu", note=lambda m: None)(pixels[:8])
        assert probs.shape == (8, 2)
        np.testing.assert_allclose(score, want, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ start-up: no torch


def test_the_onnx_path_never_imports_torch(setup, no_torch, tmp_path: Path):
    """With the graph exported, predict (auto and onnx, a checkpoint or an .onnx file) runs where torch
    cannot be imported, and does not even try: an import attempt is recorded."""
    fake = Path(no_torch["PYTHONPATH"].split(":")[0])
    tried = tmp_path / "tried"
    for name in ("torch", "torchvision"):
        (fake / name / "__init__.py").write_text(f"open({str(tried)!r}, 'a').write('{name}\\n')\n"
                                                 f"raise ImportError('{name} is absent in this test')\n")
    want = predict_lines(setup["golden"], "-m", setup["model"], "--engine", "torch")
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(setup["graph"], onnx_file)  # what 'uiaa convert m.pt model.onnx' writes (same export)
    for args in (("--engine", "auto"), ("--engine", "onnx"), ("-o", str(tmp_path / "out.csv"))):
        got = predict_lines(setup["golden"], "-m", setup["model"], *args, env=no_torch)
        if "-o" not in args:
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-4)
    got = predict_lines(setup["golden"] / "g0.png", "-m", onnx_file, env=no_torch)
    assert abs(got["g0.png"] - want["g0.png"]) <= 1e-4
    assert not tried.exists(), tried.read_text()
    # Without the exported graph and without torch, the one-line error says what is missing.
    fresh = tmp_path / "fresh.pt"
    shutil.copy(setup["model"], fresh)
    result = run_uiaa("predict", setup["golden"], "-m", fresh, env=no_torch)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 2, result.stderr  # the note, the error


# ------------------------------------------------------------------------- the exported graph, kept


def test_the_graph_is_reused_until_the_checkpoint_changes(setup, tmp_path: Path):
    notes: list[str] = []
    model = make_checkpoint(tmp_path / "best.pt", seed=11)
    graph = graphs.exported_graph(model, note=notes.append)
    assert graph == tmp_path / ".best.pt.onnx" and len(notes) == 1 and "exporting" in notes[0]
    recorded = graphs.recorded_source(graph)
    assert recorded["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    stamp = graph.stat().st_mtime_ns
    assert graphs.exported_graph(model, note=notes.append) == graph and len(notes) == 1
    # A copy (another stat, the same content) is recognised by its hash: no export.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(model, copy / "best.pt")
    shutil.copy(graph, copy / ".best.pt.onnx")
    assert graphs.exported_graph(copy / "best.pt", note=notes.append) == copy / ".best.pt.onnx"
    assert len(notes) == 1 and graph.stat().st_mtime_ns == stamp
    # Retrained: the same name, other weights. The stale graph is replaced, and scores follow.
    make_checkpoint(model, seed=12)
    assert graphs.exported_graph(model, note=notes.append) == graph and len(notes) == 2
    assert graphs.recorded_source(graph)["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    pixels = setup["pixels"]
    score, _ = engines.open_engine(str(model), "onnx", note=notes.append)(pixels)
    np.testing.assert_allclose(score, reference(model, pixels)[0], atol=1e-4, rtol=0)
    assert len(notes) == 2 and not list(tmp_path.glob("*.part"))


def test_a_read_only_run_folder_keeps_the_graph_in_the_user_cache(setup, tmp_path: Path):
    """On a read-only mount (root ignores permission bits, not a read-only file system)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(runs)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        model = make_checkpoint(runs / "best.pt", seed=5)  # the fixture's weights, written anew
        subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
        first = run_uiaa("predict", setup["golden"], "-m", model, env=env)
        assert first.returncode == 0, first.stderr
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        cached = tmp_path / "cache" / "uiaa" / "onnx" / f"{digest}.onnx"
        assert cached.is_file() and str(cached) in first.stderr.decode()
        again = run_uiaa("predict", setup["golden"], "-m", model, env=env)
        assert again.returncode == 0 and again.stderr == b""  # found in the cache: no export
        assert again.stdout == first.stdout
        want, _ = reference(model, setup["pixels"])
        got = scores_of(first)
        np.testing.assert_allclose([got[f"g{i}.png"] for i in range(len(want))], want, atol=1e-4)
    finally:
        subprocess.run(["umount", str(runs)], check=True)


def test_two_predicts_exporting_at_once_both_finish_and_leave_one_whole_graph(setup, tmp_path: Path):
    model = make_checkpoint(tmp_path / "best.pt", seed=13)
    command = [sys.executable, "-m", "uiaa_cli", "predict", str(setup["golden"]), "-m", str(model)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [o[1] for o in outputs]
    assert outputs[0][0] == outputs[1][0]
    assert all(b"running the model in torch" not in err for _, err in outputs)  # both ran ONNX Runtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.onnx", "best.pt"]  # no temporary left
    engine = engines.open_engine(str(model), "onnx", note=pytest.fail)  # whole, and matching the checkpoint
    np.testing.assert_allclose(engine(setup["pixels"])[0], reference(model, setup["pixels"])[0], atol=1e-4)


def test_metadata_reader_agrees_with_the_onnx_package(setup):
    import onnx

    want = {p.key: p.value for p in onnx.load(str(setup["graph"]), load_external_data=False).metadata_props}
    assert graphs.onnx_metadata(setup["graph"]) == want
    assert json.loads(want["uiaa_config"])["size"] == SIZE


# -------------------------------------------------------------------------------- choices, errors


def test_without_the_exporter_auto_runs_torch_and_onnx_is_an_error(setup, tmp_path: Path):
    fake = tmp_path / "no_exporter"
    for name in ("onnx", "onnxscript"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is absent in this test')\n")
    env = {"PYTHONPATH": f"{fake}:{REPO}"}
    model = make_checkpoint(tmp_path / "best.pt", seed=5)  # no graph exported for it yet
    auto = run_uiaa("predict", setup["golden"] / "g1.png", "-m", model, env=env)
    assert auto.returncode == 0
    assert auto.stderr.decode().count("\n") == 1 and "torch" in auto.stderr.decode()  # one line, saying so
    assert abs(float(auto.stdout.split(b"\t")[1]) - reference(model, setup["pixels"][1:2])[0][0]) <= 1e-4
    explicit = run_uiaa("predict", setup["golden"] / "g1.png", "-m", model, "--engine", "onnx", env=env)
    assert explicit.returncode == 2 and explicit.stdout == b""
    assert explicit.stderr.decode().count("\n") == 1 and "onnxscript" in explicit.stderr.decode()
    # An exported graph runs without the exporter.
    shutil.copy(setup["graph"], tmp_path / "model.onnx")
    ran = run_uiaa("predict", setup["golden"] / "g1.png", "-m", tmp_path / "model.onnx", env=env)
    assert ran.returncode == 0 and ran.stderr == b""


def test_bad_models_and_choices_are_one_line_errors(setup, tmp_path: Path):
    import onnx

    plain = onnx.load(str(setup["graph"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"this is not a graph\n" * 10)
    (tmp_path / "cut.pt").write_bytes(setup["model"].read_bytes()[:5000])  # truncated: no note of an export
    image = setup["golden"] / "g0.png"
    for args, says in (
        (("-m", tmp_path / "plain.onnx"), "uiaa_config"),
        (("-m", tmp_path / "junk.onnx"), "not a readable ONNX model"),
        (("-m", tmp_path / "cut.pt"), "not a readable checkpoint"),
        (("-m", setup["graph"], "--engine", "torch"), "ONNX Runtime"),
        (("-m", setup["model"], "--engine", "onnx", "--device", "mps"), "mps"),
    ):
        result = run_uiaa("predict", image, *args)
        assert result.returncode == 2 and result.stdout == b"", (args, result.stderr)
        message = result.stderr.decode()
        assert message.count("\n") == 1 and says in message, (args, message)
        assert "Traceback" not in message


def test_bf16_scores_stay_within_a_tenth_of_float32(setup):
    # CUDA runs the torch engine under bf16 autocast (models/devices.autocast); the CPU's bf16 autocast
    # runs the same path. The stated tolerance (docs/engines.md): scores within 0.1 on the 1..10 scale.
    engine = engines.TorchEngine(setup["model"], "cpu")
    assert not engine.bf16  # float32 on the CPU
    pixels = setup["pixels"]
    want, _ = reference(setup["model"], pixels)
    scores32, probs32 = engine(pixels)
    engine.bf16 = True
    scores16, probs16 = engine(pixels)
    assert np.abs(scores32 - want).max() < 1e-4
    assert not np.array_equal(scores16, scores32)  # bf16 really ran
    assert np.abs(scores16 - want).max() < 0.1 and np.abs(probs16 - probs32).max() < 0.05
    assert np.allclose(probs16.sum(axis=1), 1, atol=1e-6)  # the softmax stays in float32


def test_device_cuda_without_cuda_is_one_line(setup, tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = setup["golden"] / "g0.png"
    counts = "image," + ",".join(map(str, range(1, 11))) + "\n"
    counts += "".join(f"g{i}.png," + ",".join(str((i + j) % 5) for j in range(10)) + "\n" for i in range(8))
    (tmp_path / "counts.csv").write_text(counts)
    labels = run_uiaa("labels", tmp_path / "counts.csv", "-o", tmp_path / "labels.csv")
    assert labels.returncode == 0, labels.stderr
    for command in (("predict", image, "-m", setup["model"], "--device", "cuda", "--engine", "torch"),
                    ("predict", image, "-m", setup["model"], "--device", "cuda:1"),
                    ("train", tmp_path / "labels.csv", "--images", setup["golden"], "--device", "cuda",
                     "--weights", "none", "--out", tmp_path / "run")):
        result = run_uiaa(*command)
        message = result.stderr.decode()
        assert result.returncode == 2 and message.count("\n") == 1, (command, message)
        assert "no CUDA device is available" in message and "Traceback" not in message, (command, message)


def test_auto_picks_onnx_on_a_machine_without_a_gpu():
    if devices.gpu_driver_present():
        pytest.skip("a GPU driver is present: auto asks torch")
    assert not devices.gpu_wanted("auto") and not devices.gpu_wanted("cpu") and devices.gpu_wanted("cuda:1")
    assert devices.onnx_providers("auto", ["CPUExecutionProvider"]) == ("cpu", ["CPUExecutionProvider"])
    device, providers = devices.onnx_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert device == "cuda:1" and providers[0] == ("CUDAExecutionProvider", {"device_id": 1})


def test_the_graph_optimised_for_this_cpu_is_kept_and_gives_the_same_scores(setup, tmp_path: Path):
    """ONNX Runtime's fully optimised graph is saved in the user cache on the first load and loaded
    (cheaply) from then on; it gives the scores of the graph itself, and a new export replaces it."""
    model = make_checkpoint(tmp_path / "best.pt", seed=21)
    graph = graphs.exported_graph(model, note=lambda m: None)
    optimised = graphs.optimised_graph(graph, onnxruntime.__version__)
    if optimised is None:
        pytest.skip("no /proc/cpuinfo: graphs are optimised on every load")
    assert not optimised.exists() and optimised.parent.parent == Path(os.environ["XDG_CACHE_HOME"]) / "uiaa"
    first = engines.open_engine(str(model), "onnx", "cpu", note=pytest.fail)
    assert optimised.is_file()
    stamp = optimised.stat().st_mtime_ns
    second = engines.open_engine(str(model), "onnx", "cpu", note=pytest.fail)
    assert optimised.stat().st_mtime_ns == stamp  # loaded, not made again
    pixels = setup["pixels"]
    want = reference(model, pixels)[0]
    np.testing.assert_allclose(first(pixels)[0], want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(second(pixels)[0], first(pixels)[0], atol=1e-6, rtol=0)
    optimised.write_bytes(b"damaged")  # a damaged copy is made again, never an error
    np.testing.assert_allclose(engines.open_engine(str(model), "onnx", "cpu")(pixels)[0], want, atol=1e-4, rtol=0)
    assert optimised.stat().st_size > 1000
    make_checkpoint(model, seed=22)  # retrained: a new export, so a new optimised graph replaces the old
    engines.open_engine(str(model), "onnx", "cpu", note=lambda m: None)
    newer = graphs.optimised_graph(graph, onnxruntime.__version__)
    assert newer != optimised and newer.is_file() and not optimised.exists()
    assert not [p for p in optimised.parent.iterdir() if p.name.endswith(".part")]
