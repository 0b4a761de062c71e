"""Metrics against scipy and hand-written references, and ``uiaa evaluate`` through the real command."""

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
from uiaa_cli.tables.table import Table
from uiaa_cli.tables.writers import write_table
from uiaa_cli.targets.labels import LabelSettings, build_labels

BINS = np.arange(1.0, 11.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=3, max_size=60), st.integers(0, 2**31))
def test_rank_correlations_match_scipy_with_ties(values, seed):
    x = np.array(values, dtype=float)
    y = np.random.default_rng(seed).integers(0, 4, len(x)).astype(float)
    np.testing.assert_allclose(metrics.rankdata(x), stats.rankdata(x), atol=1e-12)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert np.isnan(metrics.spearman(x, y)) and np.isnan(metrics.pearson(x, y))
        return
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)


def random_distributions(rng, n, m=10):
    p = rng.random((n, m)) ** 3
    p[rng.random((n, m)) < 0.3] = 0
    p[:, 0] += 1e-3
    return p / p.sum(axis=1, keepdims=True)


def test_kl_and_emd_against_loops():
    rng = np.random.default_rng(1)
    y, t = random_distributions(rng, 50), random_distributions(rng, 50)
    eps = 2.2e-16
    kl = np.mean([sum(yi * np.log((yi + eps) / (ti + eps)) for yi, ti in zip(a, b)) for a, b in zip(y, t)])
    emd = []
    for a, b in zip(y, t):
        ca = cb = 0.0
        acc = 0.0
        for ai, bi in zip(a, b):
            ca, cb = ca + ai, cb + bi
            acc += (ca - cb) ** 2
        emd.append(np.sqrt(acc / len(a)))
    assert metrics.kl_divergence(y, t) == pytest.approx(kl, abs=1e-9)
    assert metrics.emd(y, t) == pytest.approx(np.mean(emd), abs=1e-9)
    assert metrics.kl_divergence(y, y) == pytest.approx(0, abs=1e-12)
    # scipy's entropy is KL without eps; it agrees where t > 0 wherever y > 0
    t_pos = (t + 1e-3) / (t + 1e-3).sum(axis=1, keepdims=True)
    assert metrics.kl_divergence(y, t_pos) == pytest.approx(np.mean(stats.entropy(y, t_pos, axis=1)), abs=1e-9)


def test_scores_accuracy_errors_by_hand():
    score, mean = np.array([6.0, 4.0, 5.0, 7.0]), np.array([5.5, 5.5, 4.0, 8.0])
    assert metrics.accuracy(score, mean, 5.0) == 0.75  # 5.0 is not > 5
    assert metrics.mse(score, mean) == pytest.approx((0.25 + 2.25 + 1 + 1) / 4)
    assert metrics.mae(score, mean) == pytest.approx((0.5 + 1.5 + 1 + 1) / 4)
    probs = np.array([[0, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0]])
    s, sd = metrics.predicted_score(probs, BINS)
    assert s[0] == 5.5 and sd[0] == 0.5
    s, sd = metrics.predicted_score(np.array([[0.25, 0.75]]), BINS)
    assert s[0] == 7.5 and sd is None


def make_labels(tmp_path, rng, n=40):
    counts = rng.integers(0, 30, size=(n, 10)).astype(float)
    counts[:, 4] += 1
    images = np.array([f"img{i:03d}" for i in range(n)])
    table, _ = build_labels(images, counts, BINS, LabelSettings())
    write_table(table, tmp_path / "labels.csv")
    return table


def test_evaluate_command_against_independent_numbers(uiaa, tmp_path):
    rng = np.random.default_rng(3)
    labels = make_labels(tmp_path, rng)
    probs = random_distributions(rng, len(labels))[::-1].copy()
    score = probs @ BINS
    std = np.sqrt(((BINS[None] - score[:, None]) ** 2 * probs).sum(axis=1))
    cols = {"image": labels["image"][::-1].copy(), "score": score, "std": std}  # another order
    cols.update({f"p_{i}": probs[:, i - 1] for i in range(1, 11)})
    cols["image"] = np.append(cols["image"][:-1], "stranger")  # one unmatched on each side
    write_table(Table(cols), tmp_path / "preds.tsv")
    r = uiaa("evaluate", tmp_path / "preds.tsv", tmp_path / "labels.csv", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["images"] == len(labels) - 1
    assert got["predictions_unmatched"] == 1 and got["labels_unmatched"] == 1
    order = {name: i for i, name in enumerate(labels["image"])}
    keep = [i for i, name in enumerate(cols["image"]) if name in order]
    li = [order[cols["image"][i]] for i in keep]
    mean, rsd = labels["mean"][li], labels.matrix([str(i) for i in range(1, 11)])[li]
    m = got["metrics"]
    assert m["srcc"] == pytest.approx(stats.spearmanr(score[keep], mean).statistic, abs=1e-9)
    assert m["pcc"] == pytest.approx(stats.pearsonr(score[keep], mean).statistic, abs=1e-9)
    assert m["accuracy"] == pytest.approx(np.mean((score[keep] > 5) == (mean > 5)))
    assert m["mse"] == pytest.approx(np.mean((score[keep] - mean) ** 2))
    assert m["std_srcc"] == pytest.approx(stats.spearmanr(std[keep], labels["std"][li]).statistic, abs=1e-9)
    eps = 2.2e-16
    assert m["kl"] == pytest.approx(np.mean(np.sum(rsd * np.log((rsd + eps) / (probs[keep] + eps)), axis=1)))
    assert "1 predictions rows had no match (stranger)" in r.stderr.decode()


def test_evaluate_without_distribution_shows_not_applicable(uiaa, tmp_path):
    labels = make_labels(tmp_path, np.random.default_rng(4))
    (tmp_path / "preds.csv").write_text(
        "image,score\n" + "".join(f"{name},{5 + i % 3}\n" for i, name in enumerate(labels["image"])))
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv")
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.decode().splitlines()[1:]:
        if not line.startswith("["):  # "[1] n/a: reason" footnotes follow the table
            label, value = re.match(r"^(.*?)\s{2,}(\S+)", line).groups()
            rows[label] = value
    assert rows["KL"] == "n/a" and rows["EMD"] == "n/a" and rows["std SRCC"] == "n/a"
    assert float(rows["SRCC"]) == pytest.approx(
        stats.spearmanr([5 + i % 3 for i in range(len(labels))], labels["mean"]).statistic, abs=1e-4)
    c = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv", "--csv")
    record = next(csv.DictReader(io.StringIO(c.stdout.decode())))
    assert record["kl"] == "n/a" and record["images"] == str(len(labels))
    assert "kl emd: the predictions have no distribution" in record["not_applicable"]


def test_empty_std_of_a_two_set_model_is_not_applicable(uiaa, tmp_path):
    labels = make_labels(tmp_path, np.random.default_rng(8))
    (tmp_path / "preds.csv").write_text("image,score,std,p_low,p_high\n" + "".join(
        f"{name},{5 + i % 4},nan,0.5,0.5\n" for i, name in enumerate(labels["image"])))
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["metrics"]
    assert m["std_srcc"] is None and m["std_pcc"] is None and m["kl"] is None
    assert m["srcc"] is not None
    assert "2-set model" in json.loads(r.stdout)["not_applicable"]["std_srcc"]


def test_evaluate_plot(uiaa, tmp_path):
    from PIL import Image

    labels = make_labels(tmp_path, np.random.default_rng(5))
    (tmp_path / "preds.csv").write_text(
        "image,score\n" + "".join(f"{name},{m:.3f}\n" for name, m in zip(labels["image"], labels["mean"])))
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv", "--plot", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "s.png") as img:
        assert img.size == (640, 640)
        assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 2


@pytest.mark.parametrize("preds, message", [
    ("image,score\nnobody,5\n", "no image of the predictions is in the labels table"),
    ("image,value\nimg000,5\n", "lacks column(s) score"),
    ("image,score\nimg000,5\nimg000,6\n", "img000 appears more than once"),
    ("", "empty input"),
])
def test_evaluate_bad_input(uiaa, tmp_path, preds, message):
    make_labels(tmp_path, np.random.default_rng(6))
    (tmp_path / "preds.csv").write_text(preds)
    r = uiaa("evaluate", tmp_path / "preds.csv", tmp_path / "labels.csv")
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "Traceback" not in err, err
