"""The Python API (docs/python.md): its outputs equal the commands' on the same inputs, its docstring
examples and the Python snippets of docs/python.md run, and ``import uiaa_cli`` stays light."""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_predict import make_checkpoint, make_photos

import uiaa_cli
from uiaa_cli import Scorer, evaluate, make_labels, make_targets, read_ratings, read_table
from uiaa_cli.errors import UiaaError
from uiaa_cli.models.graphs import exported_graph

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> Path:
    """What docs/python.md's examples start from: AVA.txt, photos/, model.pt (its ONNX graph exported)."""
    root = tmp_path_factory.mktemp("api")
    shutil.copy(test_data / "AVA_excerpt.txt", root / "AVA.txt")
    make_photos(root / "photos", n=6)
    for i, path in enumerate(sorted((root / "photos").rglob("*.jpg"))):  # flat, named as the docs name them
        path.rename(root / "photos" / f"10000{i + 1}.jpg")
    shutil.rmtree(root / "photos" / "sub")
    exported_graph(make_checkpoint(root / "model.pt"), note=lambda message: None)
    return root


def test_import_is_light():
    code = ("import sys, uiaa_cli; from uiaa_cli import Scorer, make_targets, evaluate, read_ratings\n"
            "heavy = [m for m in ('torch', 'torchvision', 'pandas', 'h5py', 'pyarrow', 'onnxruntime') "
            "if m in sys.modules]\nassert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {"Scorer", "make_targets", "evaluate", "read_ratings", "score_dataset"} <= set(dir(uiaa_cli))
    with pytest.raises(AttributeError):
        uiaa_cli.no_such_name  # noqa: B018


def test_targets_and_labels_equal_the_labels_command(uiaa, folder, tmp_path):
    out = tmp_path / "labels.parquet"
    result = uiaa("labels", folder / "AVA.txt", "--kind", "gauss-mv", "--lam", "0.5", "--cap", "1.5", "-o", out)
    assert result.returncode == 0, result.stderr
    command = read_table(out)
    votes = read_ratings(folder / "AVA.txt")
    assert votes.attrs["bins"] == list(map(float, range(1, 11))) and votes.attrs["source_format"] == "ava"
    targets = make_targets(votes.iloc[:, 1:], votes.attrs["bins"], kind="gauss-mv", lam=0.5, cap=1.5)
    assert np.array_equal(targets, command[[f"p_{b}" for b in range(1, 11)]].to_numpy())  # exact
    table = make_labels(folder / "AVA.txt")
    assert list(table.columns) == list(command.columns) and table.attrs["kind"] == "gauss-mv"
    pd.testing.assert_frame_equal(table, command, check_exact=True, check_dtype=False)
    # An independent check of one row: the mean of the votes, and the targets' mean near it.
    counts = votes.iloc[0, 1:].to_numpy(dtype=float)
    assert table["mean"][0] == pytest.approx((counts * np.arange(1, 11)).sum() / counts.sum(), abs=1e-12)
    assert (targets[0] * np.arange(1, 11)).sum() == pytest.approx(table["mean"][0], abs=0.01)
    # binary: rows inside the margin are NaN here (labels leaves them out)
    binary = make_targets([[0, 1, 0], [1, 0, 0], [0, 0, 1]], [1, 2, 3], kind="binary", delta=0.5)
    assert np.isnan(binary[0]).all() and binary[1:].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(UiaaError, match="no votes"):
        make_targets([[0, 0], [1, 1]])


def test_evaluate_equals_the_evaluate_command(uiaa, folder, tmp_path):
    labels = make_labels(folder / "AVA.txt")
    rng = np.random.default_rng(1)
    preds = pd.DataFrame({"image": labels["image"], "score": labels["mean"] + rng.normal(0, 0.5, len(labels))})
    preds["std"] = labels["std"] * rng.uniform(0.5, 1.5, len(labels))
    for j in range(1, 11):
        preds[f"p_{j}"] = labels[f"p_{j}"]
    preds.to_csv(tmp_path / "preds.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)  # the same inputs for the command
    result = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv", "--json")
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)
    ours = evaluate(preds, labels)
    assert ours.keys() == command.keys() and ours["images"] == command["images"] == len(labels)
    assert ours["not_applicable"] == command["not_applicable"]
    for key, value in command["metrics"].items():
        assert (ours["metrics"][key] is None) == (value is None), key
        if value is not None:
            assert ours["metrics"][key] == pytest.approx(value, abs=1e-12), key
    from scipy.stats import spearmanr  # independent

    assert ours["metrics"]["srcc"] == pytest.approx(spearmanr(preds["score"], labels["mean"])[0], abs=1e-12)
    assert evaluate(tmp_path / "preds.csv", tmp_path / "labels.csv")["metrics"] == ours["metrics"]


def test_evaluate_leaves_out_the_images_the_scorer_could_not_read():
    # Scorer.score keeps an unreadable image as a row with a NaN score and its reason: evaluate pairs the rest.
    from scipy.stats import spearmanr

    labels = make_labels(pd.DataFrame({"image": ["a", "b", "c", "d"], "1": [0, 3, 1, 2], "2": [1, 1, 2, 2],
                                       "3": [3, 0, 1, 0]}))
    preds = pd.DataFrame({"image": ["a", "b", "c", "d"], "score": [2.9, 1.1, 2.2, np.nan],
                          "error": ["", "", "", "cannot identify image file"]})
    result = evaluate(preds, labels)
    assert result["images"] == 3
    means = labels.set_index("image").loc[["a", "b", "c"], "mean"]
    assert result["metrics"]["srcc"] == pytest.approx(spearmanr([2.9, 1.1, 2.2], means).statistic)


def test_scorer_equals_predict_on_the_same_files(uiaa, folder, tmp_path):
    paths = sorted(str(p) for p in (folder / "photos").glob("*.jpg"))
    result = uiaa("predict", *paths, "-m", folder / "model.pt", "-o", tmp_path / "preds.csv")
    assert result.returncode == 0, result.stderr
    command = read_table(tmp_path / "preds.csv")
    scorer = Scorer(folder / "model.pt", device="cpu", batch_size=4)
    table = scorer.score(paths)
    assert list(table.columns) == list(command.columns)  # image, score, std, p_1..p_10, kind, activation
    assert table["image"].tolist() == paths
    numbers = ["score", "std", *[f"p_{j}" for j in range(1, 11)]]
    np.testing.assert_allclose(table[numbers].to_numpy(), command[numbers].to_numpy(), rtol=0, atol=1e-6)
    assert len(set(table["score"].round(6))) == len(paths)  # the photos differ, and so do their scores
    # The same pictures as PIL images, decoded arrays and encoded bytes score the same.
    pictures = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    encoded = [Path(p).read_bytes() for p in paths]
    for other in (pictures, arrays, encoded):
        np.testing.assert_allclose(scorer.score(other)["score"], command["score"], rtol=0, atol=1e-6)
    assert scorer.score(pictures)["image"].tolist() == paths  # a PIL image keeps its file name
    one = scorer.score(arrays[0])
    assert len(one) == 1 and one["image"].tolist() == ["0"]
    # A Series of paths keeps its index; a bad image is a row with its reason.
    series = pd.Series([paths[0], str(folder / "nothere.jpg")], index=[10, 20])
    scored = scorer.score(series)
    assert scored.index.tolist() == [10, 20] and np.isnan(scored.loc[20, "score"])
    assert "no such file" in scored.loc[20, "error"] and scored.loc[10, "error"] == ""
    with pytest.raises(UiaaError, match="no such file"):
        scorer.score(series, errors="raise")
    # The Ray form: a batch dict of decoded arrays, other columns passed through.
    batch = {"image": np.array(arrays[:3] + [np.zeros((2, 2), np.float32)], dtype=object),
             "path": np.array(paths[:3] + ["bad"])}
    out = scorer(batch)
    assert "image" not in out and out["path"].tolist() == paths[:3] + ["bad"]
    np.testing.assert_allclose(out["score"][:3], command["score"][:3], rtol=0, atol=1e-6)
    assert out["error"][:3].tolist() == ["", "", ""] and "uint8" in out["error"][3] and np.isnan(out["score"][3])
    with pytest.raises(UiaaError, match="mean"):
        evaluate(table, table)


def test_docstring_examples_run(folder, monkeypatch):
    """Every docstring example of the API (they use model.pt and photos/ as docs/python.md does)."""
    import uiaa_cli.api
    import uiaa_cli.predict.scorer

    monkeypatch.chdir(folder)
    for module in (uiaa_cli.api, uiaa_cli.predict.scorer):
        failed, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=True)
        assert tried > 3 and failed == 0, module.__name__


def python_snippets(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_docs_python_snippets_run(folder, tmp_path):
    """The ```python blocks of docs/python.md and the README's "From Python" run in order, in one
    interpreter, in a folder holding AVA.txt, photos/ and model.pt (the Ray blocks in tests/test_ray.py)."""
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0] if "## From Python" in readme else ""
    snippets = [s for s in python_snippets(section) + python_snippets((REPO / "docs" / "python.md").read_text())
                if "import ray" not in s]
    assert len(snippets) >= 3
    program = "\n".join(f"# --- snippet {i}\n{s}" for i, s in enumerate(snippets))
    result = subprocess.run([sys.executable, "-c", program], cwd=work, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
