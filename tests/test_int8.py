"""int8 models (models/quantize.py): ``convert --int8``, ``predict -m model-int8.onnx``, ``--precision int8``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_uiaa
from scipy.stats import spearmanr
from test_predict import make_checkpoint

from uiaa_cli.models.quantize import float_nodes, int8_support, split_calibration

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="the optional onnx extra is not installed (pip install 'uiaa[onnx]')")

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
IMAGES = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A resnet18 checkpoint, its fp32 and int8 exports, and varied photos (the example data's)."""
    root = tmp_path_factory.mktemp("int8")
    subprocess.run([sys.executable, REPO / "examples" / "make_examples.py", root / "ex", "-n", str(IMAGES)],
                   check=True, capture_output=True, timeout=120)
    model = make_checkpoint(root / "m.pt", size=SIZE, seed=3)
    fp32, int8 = root / "m.onnx", root / "m-int8.onnx"
    assert run_uiaa("convert", model, fp32).returncode == 0
    converted = run_uiaa("convert", model, int8, "--int8", "--calibrate", root / "ex" / "images")
    assert converted.returncode == 0, converted.stderr
    return {"root": root, "model": model, "fp32": fp32, "int8": int8, "images": root / "ex" / "images",
            "convert": converted}


def metadata(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def run_model(path: Path, pixels: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"pixels": pixels})


def photos(setup: dict) -> np.ndarray:
    from uiaa_cli.pixels.images import decode_image, list_images

    return np.stack([decode_image(p, SIZE) for p in list_images(setup["images"])]).transpose(0, 3, 1, 2).copy()


# ------------------------------------------------------------------------------- uiaa convert


def test_convert_reports_the_agreement(setup):
    result = setup["convert"]
    assert result.stdout == b""
    line = [x for x in result.stderr.decode().splitlines() if "held-back" in x]
    assert line and "max |score difference|" in line[0] and "SRCC" in line[0], result.stderr


def test_int8_keeps_inputs_outputs_and_config(setup):
    import onnx

    fp32, int8 = onnx.load(str(setup["fp32"])), onnx.load(str(setup["int8"]))
    assert [(i.name, i.type) for i in int8.graph.input] == [(i.name, i.type) for i in fp32.graph.input]
    assert [(o.name, o.type) for o in int8.graph.output] == [(o.name, o.type) for o in fp32.graph.output]
    config = json.loads(metadata(setup["fp32"])["uiaa_config"])
    config8 = json.loads(metadata(setup["int8"])["uiaa_config"])
    assert config8.pop("precision") == "int8" and config8.pop("calibration")["images"] > 0
    assert config8 == config
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "QuantizeLinear" not in [n.op_type for n in fp32.graph.node]
    # Every Conv is fusable into ONNX Runtime's int8 kernel: its weight and bias come quantized (the
    # exporter's shared zero biases, behind Identity nodes, would leave Convs in float).
    producer = {o: n for n in int8.graph.node for o in n.output}
    for conv in (n for n in int8.graph.node if n.op_type == "Conv"):
        assert all(producer[x].op_type == "DequantizeLinear" for x in conv.input), conv.name


def test_preprocessing_stays_exact(setup):
    """The uint8 input is not quantized and the normalisation before the first Conv runs in float:
    its output equals x / (255 std) - mean / std, computed here from the config."""
    import onnx

    model = onnx.load(str(setup["int8"]))
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[first_conv.input[0]]
    assert dq.op_type == "DequantizeLinear"  # the network itself is quantized...
    normalised = producer[dq.input[0]].input[0]  # ...from the exact normalised pixels (Q's input)
    assert producer[normalised].op_type in ("Add", "Sub")
    consumers = [n for n in model.graph.node if "pixels" in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]
    model.graph.output.add(name=normalised)
    path = setup["root"] / "probe.onnx"
    onnx.save(model, str(path))
    pixels = photos(setup)[:8]
    (x,) = run_model(path, pixels, [normalised])
    config = json.loads(metadata(setup["int8"])["uiaa_config"])
    mean, std = np.array(config["mean"]).reshape(1, 3, 1, 1), np.array(config["std"]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x, (pixels / 255.0 - mean) / std, rtol=0, atol=1e-5)


def test_int8_scores_follow_fp32(setup):
    pixels = photos(setup)
    score, probs = run_model(setup["fp32"], pixels)
    score8, probs8 = run_model(setup["int8"], pixels)
    assert len(score) == IMAGES and np.ptp(score) > 0.05  # varied images: a ranking worth keeping
    assert spearmanr(score, score8).statistic >= 0.95
    assert np.abs(score - score8).max() < 0.1
    np.testing.assert_allclose(probs8.sum(axis=1), 1, atol=1e-5)  # the softmax stays float


def test_convert_int8_from_an_onnx_export(setup, uiaa, tmp_path):
    """An fp32 .onnx quantizes without torch; an int8 one is refused (quantize the fp32 export)."""
    from conftest import REPO as repo

    fake = tmp_path / "no_torch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch is absent in this test')\n")
    env = {"PYTHONPATH": f"{fake}:{repo}"}
    result = uiaa("convert", setup["fp32"], tmp_path / "q.onnx", "--int8", "--calibrate", setup["images"], env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(metadata(tmp_path / "q.onnx")["uiaa_config"])["precision"] == "int8"
    again = uiaa("convert", setup["int8"], tmp_path / "q2.onnx", "--int8", "--calibrate", setup["images"])
    assert again.returncode == 2 and b"already a int8 model" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--int8"], b"--int8 needs --calibrate"),
    (["--int8", "--calibrate", "nowhere"], b"nowhere: no such file or folder"),
])
def test_convert_int8_usage_errors(setup, uiaa, tmp_path, args, message):
    result = uiaa("convert", setup["model"], tmp_path / "x.onnx", *args)
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "x.onnx").exists()
    assert b"Traceback" not in result.stderr


def test_convert_int8_needs_an_onnx_target(setup, uiaa, tmp_path):
    result = uiaa("convert", setup["model"], tmp_path / "x.ts", "--int8", "--calibrate", setup["images"])
    assert result.returncode == 2 and b"an int8 model is an ONNX file" in result.stderr


def test_too_few_calibration_images(setup, uiaa, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(setup["images"].iterdir())[:5]:
        (few / p.name).write_bytes(p.read_bytes())
    result = uiaa("convert", setup["fp32"], tmp_path / "x.onnx", "--int8", "--calibrate", few)
    assert result.returncode == 2 and b"5 images to calibrate" in result.stderr


# --------------------------------------------------------------------------------- the parts


@pytest.mark.parametrize("flags, fast", [
    ("fpu sse sse2 avx avx2 fma avx512f avx512_vnni amx_int8", True),
    ("fpu sse sse2 avx avx2 fma avx_vnni", True),
    ("fpu sse sse2 avx avx2 fma", True),
    ("fpu sse sse2 sse4_1 sse4_2 avx", False),
])
def test_int8_support_x86(flags, fast):
    assert int8_support(f"processor\t: 0\nflags\t\t: {flags}\n").fast is fast


def test_int8_support_arm():
    assert int8_support("Features\t: fp asimd evtstrm aes crc32 asimddp\n").fast is True
    assert int8_support("Features\t: fp asimd evtstrm aes crc32\n").fast is False


def test_split_calibration_is_disjoint_and_spread():
    for n in (16, 40, 192, 5000):
        calibrate, check = split_calibration(n, 128, 64)
        assert not set(calibrate) & set(check)
        assert len(calibrate) == min(128, n - len(check)) and len(check) == (min(64, n) if n >= 192 else -(-n // 4))
        assert check.min() <= n // 8 and check.max() >= n - n // 4 - 1  # spread over the data, not its head


def test_float_nodes_are_the_head_and_the_tail(setup):
    import onnx

    model = onnx.load(str(setup["fp32"]))
    kept = set(float_nodes(model))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert sorted(ops[k] for k in kept) == sorted(["Cast", "Mul", "Add", "Gemm", "Softmax", "MatMul"])


# -------------------------------------------------------------------------------- uiaa predict


def predicted(result: subprocess.CompletedProcess) -> dict[str, float]:
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.decode().splitlines()]
    return {name: float(score) for name, score in lines}


def test_predict_runs_an_int8_model(setup, uiaa):
    fp32 = predicted(uiaa("predict", setup["images"], "-m", setup["fp32"]))
    int8 = predicted(uiaa("predict", setup["images"], "-m", setup["int8"]))
    assert list(int8) == list(fp32) and len(int8) == IMAGES
    a, b = np.array(list(fp32.values())), np.array(list(int8.values()))
    assert spearmanr(a, b).statistic >= 0.95 and np.abs(a - b).max() < 0.1
    assert np.abs(a - b).max() > 0  # really the int8 model


def test_precision_int8_quantizes_a_checkpoint_once(setup, uiaa, tmp_path):
    model = tmp_path / "best.pt"
    model.write_bytes(setup["model"].read_bytes())
    first = uiaa("predict", setup["images"], "-m", model, "--precision", "int8")
    kept = tmp_path / ".best.pt.int8.onnx"
    assert kept.is_file() and b"quantizing" in first.stderr and b"held-back" in first.stderr
    assert json.loads(metadata(kept)["uiaa_config"])["precision"] == "int8"
    again = uiaa("predict", setup["images"], "-m", model, "--precision", "int8")
    assert b"quantizing" not in again.stderr  # reused
    scores, scores_again = predicted(first), predicted(again)
    assert scores == scores_again
    fp32 = predicted(uiaa("predict", setup["images"], "-m", setup["fp32"]))
    assert spearmanr(list(fp32.values()), list(scores.values())).statistic >= 0.95
    # --calibrate quantizes anew, on those images
    fresh = uiaa("predict", setup["images"] / "100001.jpg", "-m", model, "--precision", "int8",
                 "--calibrate", setup["images"])
    assert fresh.returncode == 0 and b"quantizing" in fresh.stderr, fresh.stderr


@pytest.mark.parametrize("args", [
    ["--precision", "int8", "--device", "cuda"],
    ["--precision", "int8", "--device", "cuda:0"],
    ["--precision", "int8", "--engine", "torch"],
])
def test_int8_on_a_gpu_or_torch_is_refused(setup, uiaa, args):
    result = uiaa("predict", setup["images"], "-m", setup["model"], *args)
    assert result.returncode == 2 and result.stdout == b"" and b"Traceback" not in result.stderr
    assert b"int8 models" in result.stderr
    onnx_model = uiaa("predict", setup["images"], "-m", setup["int8"], *args[2:])
    assert onnx_model.returncode == 2 and b"int8 models" in onnx_model.stderr


def test_precision_that_the_model_does_not_have(setup, uiaa):
    result = uiaa("predict", setup["images"], "-m", setup["fp32"], "--precision", "int8")
    assert result.returncode == 2 and b"uiaa convert" in result.stderr
    result = uiaa("predict", setup["images"], "-m", setup["int8"], "--precision", "fp32")
    assert result.returncode == 2 and b"an int8 ONNX model" in result.stderr
    result = uiaa("predict", setup["images"], "-m", setup["model"], "--calibrate", setup["images"])
    assert result.returncode == 2 and b"--calibrate goes with --precision int8" in result.stderr


def test_slow_cpu_refuses_precision_int8(monkeypatch):
    from uiaa_cli.errors import UiaaError
    from uiaa_cli.models import quantize

    monkeypatch.setattr(quantize, "int8_support", lambda cpuinfo=None: quantize.Int8Support(False, "x86 without AVX2"))
    with pytest.raises(UiaaError, match="lacks the int8 instructions"):
        quantize.check_int8_device("cpu", requested=True)
    notes: list[str] = []
    quantize.check_int8_device("cpu", requested=False, note=notes.append)  # an int8 file: a warning
    assert len(notes) == 1 and "slower than fp32" in notes[0]
