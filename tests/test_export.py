"""``uiaa convert model.pt model.ts|model.onnx``: exported models give predict's scores (to 1e-4)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import run_uiaa
from test_predict import make_checkpoint, make_photos

from uiaa_cli.pixels.images import decode_image
from uiaa_cli.tables.table import read_table

SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    make_photos(root / "photos", n=6)
    model = make_checkpoint(root / "m.pt", size=SIZE, seed=3)
    preds = root / "preds.csv"
    result = run_uiaa("predict", root / "photos", "-m", model, "-o", preds)
    assert result.returncode == 0, result.stderr
    table = read_table(preds)
    # The exported model's documented input: the image decoded as predict does, channels first.
    pixels = np.stack([decode_image(p, SIZE) for p in table["image"]]).transpose(0, 3, 1, 2)
    return {"root": root, "model": model, "preds": table, "pixels": np.ascontiguousarray(pixels)}


def check(score: np.ndarray, probs: np.ndarray, preds) -> None:
    np.testing.assert_allclose(score, preds["score"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, preds.matrix([f"p_{i}" for i in range(1, 11)]), atol=1e-4, rtol=0)


def test_torchscript_scores_equal_predict(setup, uiaa):
    import torch

    from uiaa_cli.models.export import load_torchscript

    target = setup["root"] / "m.ts"
    result = uiaa("convert", setup["model"], target)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    module, config = load_torchscript(target)
    assert config["size"] == SIZE and config["targets"][-1] == "p_10"
    with torch.no_grad():
        score, probs = module(torch.from_numpy(setup["pixels"]))  # uint8, any batch size
        check(score.numpy(), probs.numpy(), setup["preds"])
        score_f, _ = module(torch.from_numpy(setup["pixels"][:2]).float())  # float 0..255 works too
    np.testing.assert_allclose(score_f.numpy(), setup["preds"]["score"][:2], atol=1e-4, rtol=0)


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
                    reason="the optional onnx extra is not installed (pip install 'uiaa[onnx]')")
def test_onnx_scores_equal_predict(setup, uiaa):
    import json

    import onnx
    import onnxruntime

    target = setup["root"] / "m.onnx"
    result = uiaa("convert", setup["model"], target)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    meta = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    assert json.loads(meta["uiaa_config"])["size"] == SIZE
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    score, probs = session.run(["score", "probs"], {"pixels": setup["pixels"]})
    check(score, probs, setup["preds"])


def test_bad_export_target_is_a_usage_error(setup, uiaa, tmp_path: Path):
    result = uiaa("convert", setup["model"], tmp_path / "m.zip")
    assert result.returncode == 2 and b".onnx" in result.stderr and not (tmp_path / "m.zip").exists()
