"""``uiaa evaluate`` knows the model's head: what applies, the spread of the scores, joins, bad input.

Every number is checked against numpy/scipy computed here; every n/a must carry its reason in the
text table, the JSON and the CSV alike, and the JSON must be strict (no NaN).
"""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from uiaa_cli import metrics
from uiaa_cli.evaluation import file_stems
from uiaa_cli.tables.table import Table
from uiaa_cli.tables.writers import write_table
from uiaa_cli.targets.labels import LabelSettings, build_labels

BINS = np.arange(1.0, 11.0)
DISTRIBUTION = ("kl", "emd", "std_srcc", "std_pcc", "std_mean", "std_ratio")


def make_labels(path, n=40, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=(n, 10)).astype(float)
    counts[:, 4] += 1
    images = np.array(ids if ids is not None else [f"img{i:03d}" for i in range(n)])
    table, _ = build_labels(images, counts, BINS, LabelSettings())
    write_table(table, path)
    return table


def strict_json(text: bytes) -> dict:
    def refuse(name):
        raise AssertionError(f"JSON holds {name}")
    return json.loads(text, parse_constant=refuse)


def text_rows(stdout: bytes) -> dict[str, tuple[str, str | None]]:
    """The text table as {label: (value, reason or None)}."""
    lines = stdout.decode().splitlines()
    notes = dict(re.match(r"\[(\d+)\] n/a: (.*)$", line).groups() for line in lines if line.startswith("["))
    rows = {}
    for line in lines[1:]:
        m = re.match(r"^(.*?)\s{2,}(\S+)(?:\s+\[(\d+)\])?$", line)
        if m and not line.startswith("["):
            rows[m.group(1)] = (m.group(2), notes.get(m.group(3)) if m.group(3) else None)
    return rows


def csv_record(stdout: bytes) -> dict[str, str]:
    return next(csv.DictReader(io.StringIO(stdout.decode())))


def three_ways(uiaa, preds, labels):
    """text, JSON and CSV outputs of one evaluation (each must succeed and be warning-free)."""
    out = []
    for flag in ((), ("--json",), ("--csv",)):
        r = uiaa("evaluate", preds, labels, *flag)
        assert r.returncode == 0, r.stderr
        assert b"Warning" not in r.stderr and b"Traceback" not in r.stderr, r.stderr
        out.append(r)
    return text_rows(out[0].stdout), strict_json(out[1].stdout), csv_record(out[2].stdout), out[0].stderr.decode()


def predictions(labels, probs, *, extra=None, std=None):
    score = probs @ BINS if probs.shape[1] == 10 else 10 * probs[:, 1]
    cols = {"image": labels["image"].copy(), "score": score}
    if std is not None:
        cols["std"] = std
    names = [f"p_{i}" for i in range(1, 11)] if probs.shape[1] == 10 else ["p_low", "p_high"]
    cols.update({n: probs[:, j] for j, n in enumerate(names)})
    cols.update({k: np.full(len(score), v) for k, v in (extra or {}).items()})
    return Table(cols), score


def test_raw_linear_outputs_are_not_a_distribution(uiaa, tmp_path):
    """p_* with negatives that do not sum to 1 (an mse head), in a plain CSV with no metadata."""
    labels = make_labels(tmp_path / "labels.csv")
    rng = np.random.default_rng(1)
    raw = labels.matrix([f"p_{i}" for i in range(1, 11)]) + rng.normal(0, 0.05, (len(labels), 10))
    std = np.sqrt(np.maximum(((BINS - (raw @ BINS)[:, None]) ** 2 * raw).sum(axis=1), 0))
    table, score = predictions(labels, raw, std=std)
    (tmp_path / "preds.csv").write_text(",".join(table.names) + "\n" + "\n".join(
        ",".join(str(table[n][i]) for n in table.names) for i in range(len(table))) + "\n")
    text, js, row, _ = three_ways(uiaa, tmp_path / "preds.csv", tmp_path / "labels.csv")
    for key in DISTRIBUTION:
        label = metrics.METRIC_LABELS[key]
        assert text[label][0] == "n/a" and "not a distribution" in text[label][1], (label, text[label])
        assert js["metrics"][key] is None and "negative" in js["not_applicable"][key]
        assert row[key] == "n/a"
        assert re.search(rf"\b{key}\b[a-z_ ]*: p_\* are not a distribution", row["not_applicable"])
    # The score is still a rating: SRCC and MSE apply, from independent numbers.
    assert js["metrics"]["srcc"] == pytest.approx(stats.spearmanr(score, labels["mean"]).statistic, abs=1e-9)
    assert js["metrics"]["mse"] == pytest.approx(np.mean((score - labels["mean"]) ** 2))
    assert float(text["MSE"][0]) == pytest.approx(js["metrics"]["mse"], abs=1e-4)


def test_a_linear_head_is_known_from_its_column_even_when_outputs_look_like_a_distribution(uiaa, tmp_path):
    labels = make_labels(tmp_path / "labels.csv")
    table, _ = predictions(labels, labels.matrix([f"p_{i}" for i in range(1, 11)]),
                           extra={"kind": "gauss-mv", "activation": "linear"}, std=labels["std"] * 0.7)
    write_table(table, tmp_path / "preds.csv")
    text, js, row, _ = three_ways(uiaa, tmp_path / "preds.csv", tmp_path / "labels.csv")
    assert js["head"] == {"kind": "gauss-mv", "activation": "linear"}
    for key in DISTRIBUTION:
        assert js["metrics"][key] is None and "head is linear" in js["not_applicable"][key]
        assert "head is linear" in text[metrics.METRIC_LABELS[key]][1]
    # The same numbers from a softmax head: every distribution metric applies.
    write_table(Table({**table.columns, "activation": np.full(len(table), "softmax")}), tmp_path / "soft.csv")
    js = strict_json(uiaa("evaluate", tmp_path / "soft.csv", tmp_path / "labels.csv", "--json").stdout)
    assert js["not_applicable"] == {}
    assert js["metrics"]["std_srcc"] == pytest.approx(1.0)  # 0.7 * std ranks as std
    assert js["metrics"]["std_ratio"] == pytest.approx(0.7)


def test_a_binary_models_score_is_not_a_rating(uiaa, tmp_path):
    labels = make_labels(tmp_path / "labels.csv", seed=2)
    p_high = 1 / (1 + np.exp(-(labels["mean"] - 5) * 3))
    table, score = predictions(labels, np.column_stack([1 - p_high, p_high]),
                               extra={"kind": "binary", "activation": "softmax"}, std=np.full(len(labels), np.nan))
    write_table(table, tmp_path / "preds.csv")
    text, js, row, _ = three_ways(uiaa, tmp_path / "preds.csv", tmp_path / "labels.csv")
    for key in ("mse", "mae"):
        assert js["metrics"][key] is None and "binary" in js["not_applicable"][key]
        assert text[metrics.METRIC_LABELS[key]][0] == "n/a" and "not a rating" in text[metrics.METRIC_LABELS[key]][1]
        assert row[key] == "n/a"
    assert js["metrics"]["accuracy"] == pytest.approx(np.mean((score > 5) == (labels["mean"] > 5)))
    assert js["metrics"]["srcc"] == pytest.approx(stats.spearmanr(score, labels["mean"]).statistic, abs=1e-9)
    assert js["metrics"]["kl"] is None and js["metrics"]["std_srcc"] is None


def test_the_head_from_hdf5_attributes(uiaa, tmp_path):
    labels = make_labels(tmp_path / "labels.csv", seed=3)
    p_high = np.clip(labels["mean"] / 10, 0, 1)
    table, _ = predictions(labels, np.column_stack([1 - p_high, p_high]))
    write_table(Table(table.columns, {"kind": "binary", "loss": "huber"}), tmp_path / "preds.h5")
    js = strict_json(uiaa("evaluate", tmp_path / "preds.h5", tmp_path / "labels.csv", "--json").stdout)
    assert js["head"] == {"kind": "binary", "activation": "linear"}
    assert js["metrics"]["mse"] is None and js["metrics"]["srcc"] is not None


def test_spread_and_std_calibration_say_when_a_model_plays_safe(uiaa, tmp_path):
    labels = make_labels(tmp_path / "labels.csv", n=60, seed=4)
    target = labels.matrix([f"p_{i}" for i in range(1, 11)])
    # A timid model: the label distribution pulled halfway to a flat 5.5.
    timid = 0.5 * target + 0.5 * np.full_like(target, 0.1)
    score = timid @ BINS
    std = np.sqrt(((BINS - score[:, None]) ** 2 * timid).sum(axis=1))
    table, _ = predictions(labels, timid, std=std)
    write_table(table, tmp_path / "preds.csv")
    text, js, row, _ = three_ways(uiaa, tmp_path / "preds.csv", tmp_path / "labels.csv")
    m = js["metrics"]
    assert m["score_sd"] == pytest.approx(np.std(score))
    assert m["true_sd"] == pytest.approx(np.std(labels["mean"]))
    assert m["sd_ratio"] == pytest.approx(np.std(score) / np.std(labels["mean"]))
    assert m["sd_ratio"] < 0.6  # it plays safe, and the table says so
    assert m["std_mean"] == pytest.approx(std.mean())
    assert m["true_std_mean"] == pytest.approx(labels["std"].mean())
    assert m["std_ratio"] == pytest.approx(std.mean() / labels["std"].mean())
    assert float(text["sd ratio"][0]) == pytest.approx(m["sd_ratio"], abs=1e-4)
    assert float(row["std_ratio"]) == pytest.approx(m["std_ratio"])


def test_constant_scores_give_na_not_nan(uiaa, tmp_path):
    labels = make_labels(tmp_path / "labels.csv", seed=5)
    (tmp_path / "preds.csv").write_text("image,score\n" + "".join(f"{n},5.5\n" for n in labels["image"]))
    text, js, row, _ = three_ways(uiaa, tmp_path / "preds.csv", tmp_path / "labels.csv")
    assert text["SRCC"][0] == "n/a" and "constant" in text["SRCC"][1]
    assert all(value != "nan" for value, _ in text.values()) and js["metrics"]["srcc"] is None
    assert row["srcc"] == "n/a" and row["sd_ratio"] == "0.0"
    assert text["KL"][0] == "n/a" and "no distribution" in text["KL"][1]


def test_folder_predictions_join_labels_on_the_file_stem(uiaa, tmp_path):
    """The evaluate --help example: predict ph2/ keys 'ph2/100100.jpg', labels key '100100'."""
    labels = make_labels(tmp_path / "labels.csv", n=20, ids=[str(100100 + i) for i in range(20)])
    names = [f"ph2/{100100 + i}.jpg" for i in range(19)] + ["ph2/other.png"]
    score = np.linspace(3, 7, 20)
    write_table(Table({"image": np.array(names), "score": score}), tmp_path / "preds.csv")
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv", "--json")
    assert r.returncode == 0, r.stderr
    js = strict_json(r.stdout)
    assert js["images"] == 19 and js["predictions_unmatched"] == 1 and js["labels_unmatched"] == 1
    assert js["metrics"]["srcc"] == pytest.approx(stats.spearmanr(score[:19], labels["mean"][:19]).statistic)
    assert "joined on file names without folder and extension" in r.stderr.decode()


def test_nothing_joined_names_both_files(uiaa, tmp_path):
    make_labels(tmp_path / "labels.csv", n=5)
    (tmp_path / "preds.csv").write_text("image,score\na/x.jpg,5\nb/y.jpg,6\n")
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv")
    assert r.returncode == 2 and not r.stdout
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uiaa evaluate: error:"), lines
    assert "preds.csv" in lines[0] and "labels.csv" in lines[0] and "'a/x.jpg'" in lines[0] and "img000" in lines[0]


@pytest.mark.parametrize("bad", ["abc", "", "inf"])
def test_a_bad_score_is_one_line_naming_file_and_row(uiaa, tmp_path, bad):
    labels = make_labels(tmp_path / "labels.csv", n=5)
    rows = [f"{n},{5 + i}" for i, n in enumerate(labels["image"])]
    rows[2] = f"{labels['image'][2]},{bad}"
    (tmp_path / "preds.csv").write_text("image,score\n" + "\n".join(rows) + "\n")
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv")
    assert r.returncode == 2 and not r.stdout
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr.decode(), r.stderr
    assert lines[0].startswith("uiaa evaluate: error: ") and "preds.csv" in lines[0]
    assert "row 3 (image img002)" in lines[0]


def test_file_stems():
    got = file_stems(np.array(["ph2/100100.jpg", "a\\b\\c.PNG", "100100", "x.y.jpeg", "v1.2", ".jpg"]))
    assert got.tolist() == ["100100", "c", "100100", "x.y", "v1.2", ".jpg"]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(2, 12), st.integers(0, 2**31))
def test_distribution_check(n, m, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, m))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert metrics.distribution_problem(p) is None
    assert metrics.distribution_problem(np.round(p, 4)) is None  # a 4-decimal CSV still passes
    row = int(rng.integers(0, n))
    off = p.copy()
    off[row] *= 1.01
    assert "do not sum to 1" in metrics.distribution_problem(off)
    neg = p.copy()
    neg[row, 1] += neg[row, 0] + 1e-3  # still sums to 1, with one value of -0.001
    neg[row, 0] = -1e-3
    assert "negative" in metrics.distribution_problem(neg)
    nan = p.copy()
    nan[row, -1] = np.nan
    assert "not finite" in metrics.distribution_problem(nan)
