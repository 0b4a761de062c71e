"""``uiaa labels`` through the real command: formats, the standard AVA split, summaries, bad input."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pandas as pd
import pytest

from uiaa_cli.tables.table import read_table
from uiaa_cli.targets.ratings import read_ratings

AVA_LINES = (
    "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n"
    "2 953958 10 7 15 26 26 21 10 8 1 2 1 21 1396\n"
    "3 954184 0 0 4 8 41 56 10 3 4 0 0 0 1396\n"
)


def read_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype={"image": str})


def test_ava_to_csv_on_stdout(uiaa, tmp_path):
    path = tmp_path / "AVA.txt"
    path.write_text(AVA_LINES.replace("\n", "  \n").rstrip("\n "))  # trailing spaces, no final newline
    r = uiaa("labels", path)
    assert r.returncode == 0, r.stderr
    df = read_csv(r.stdout)
    assert list(df["image"]) == ["953619", "953958", "954184"]
    assert list(df.columns) == (["image", "votes", "mean", "std"] + [str(i) for i in range(1, 11)]
                                + [f"p_{i}" for i in range(1, 11)])
    counts = np.array([[0, 1, 5, 17, 38, 36, 15, 6, 5, 1]])
    assert df["votes"][0] == counts.sum()
    assert df["mean"][0] == pytest.approx((counts * np.arange(1, 11)).sum() / counts.sum())
    np.testing.assert_allclose(df[[f"p_{i}" for i in range(1, 11)]].sum(axis=1), 1, atol=1e-12)
    err = r.stderr.decode()
    assert "3 rows in" in err and "3 out" in err and "reconstruction error" in err
    assert err.count("\n") == 1


def test_stdin_and_kinds(uiaa):
    for kind, columns in (("binary", ["p_low", "p_high"]), ("soft", ["p_low", "p_high"]),
                          ("rsd", [f"p_{i}" for i in range(1, 11)])):
        r = uiaa("labels", "-", "--kind", kind, input=AVA_LINES.encode())
        assert r.returncode == 0, r.stderr
        df = read_csv(r.stdout)
        assert list(df.columns[-len(columns):]) == columns
    binary = read_csv(uiaa("labels", "-", "--kind", "binary", input=AVA_LINES.encode()).stdout)
    assert list(binary["p_high"]) == [1, 0, 1]  # means 5.64, 4.70, 5.67


def test_binary_margin_is_reported(uiaa):
    r = uiaa("labels", "-", "--kind", "binary", "--delta", "0.5", input=AVA_LINES.encode())
    df = read_csv(r.stdout)  # means 699/124 = 5.64, 592/126 = 4.70 (within 0.5 of 5: left out), 715/126
    assert list(df["image"]) == ["953619", "954184"]
    assert list(df["p_high"]) == [1, 1]
    assert "1 inside the binary margin" in r.stderr.decode()


def test_standard_ava_split_in_two_commands(uiaa, test_data, tmp_path):
    ava, test_list = test_data / "AVA_excerpt.txt", test_data / "generic_test_excerpt.jpgl"
    train = uiaa("labels", ava, "--exclude", test_list, "-o", tmp_path / "train.csv")
    test = uiaa("labels", ava, "--only", test_list, "-o", tmp_path / "test.csv")
    assert train.returncode == 0 and test.returncode == 0, (train.stderr, test.stderr)
    a, b = read_table(tmp_path / "train.csv"), read_table(tmp_path / "test.csv")
    ids = set(test_list.read_text().split())
    assert set(b["image"]) <= ids and not (set(a["image"]) & ids)
    assert len(a) + len(b) == 487
    assert len(b) == 38 and "not in --only" in test.stderr.decode() and "in --exclude" in train.stderr.decode()


def test_ava_sample_facts(test_data):
    r = read_ratings(str(test_data / "AVA_excerpt.txt"))
    assert r.counts.shape == (487, 10)
    first = r.counts[:400]  # the first 400 lines: a few challenges, rated a little above all AVA
    mean = first @ np.arange(1, 11) / first.sum(axis=1)
    assert 0.6 < np.mean(mean > 5) < 0.9  # full AVA: 70.8%, these lines 84.5%
    assert 5.2 < mean.mean() < 5.7  # full AVA: 5.383, these lines 5.576
    assert 78 <= r.counts.sum(axis=1).min() and r.counts.sum(axis=1).max() <= 549  # full AVA's range


def test_koniq_fractions_and_hdf5_output(uiaa, test_data, tmp_path):
    out = tmp_path / "koniq.h5"
    r = uiaa("labels", test_data / "koniq10k_excerpt.csv", "--kind", "rsd", "-o", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        g = f["table"]
        assert g.attrs["kind"] == "rsd"
        np.testing.assert_array_equal(g.attrs["bins"], [1, 2, 3, 4, 5])
        assert len(g["image"]) == 300
    raw = pd.read_csv(test_data / "koniq10k_excerpt.csv")
    t = read_table(out)
    assert t["image"][0] == raw["image_name"][0]
    np.testing.assert_array_equal(t["votes"], raw["c_total"])
    # KonIQ's MOS (0..100) comes from the same votes after its own filtering: close, not equal
    assert np.corrcoef(t["mean"], raw["MOS"])[0, 1] > 0.95
    np.testing.assert_allclose(t["std"], raw["SD"], atol=0.05)


def test_counts_table_and_long_table_agree(uiaa, tmp_path):
    counts = tmp_path / "counts.tsv"
    counts.write_text("image\t1\t2\t3\t4\t5\nx\t1\t0\t2\t0\t1\ny\t0\t0\t0\t3\t0\n")
    votes = tmp_path / "votes.csv"
    votes.write_text("image,score\nx,1\nx,3\ny,4\nx,3\ny,4\nx,5\ny,4\n")
    a = uiaa("labels", counts, "--kind", "rsd")
    b = uiaa("labels", votes, "--kind", "rsd")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout
    assert "scale 1..5" in a.stderr.decode()


def test_scale_override_and_min_votes(uiaa, tmp_path):
    votes = tmp_path / "votes.csv"
    votes.write_text("image,score\nx,2\nx,3\ny,2\n")
    r = uiaa("labels", votes, "--scale", "1..10", "--min-votes", "2", "--kind", "rsd")
    df = read_csv(r.stdout)
    assert list(df["image"]) == ["x"] and "10" in df.columns
    assert "fewer than 2 votes" in r.stderr.decode()


def test_plain_csv_and_attributes_through_a_parquet_pipe(uiaa, tmp_path):
    r = uiaa("labels", "-", "--lam", "0.3", "--cap", "2", input=AVA_LINES.encode())
    assert r.stdout.startswith(b"image,votes,mean,std,1,2,")  # plain: the header is the first line
    frame = pd.read_csv(io.BytesIO(r.stdout))  # no options
    assert len(frame) == len(AVA_LINES.splitlines()) and frame.columns[0] == "image"
    assert np.allclose(frame[[f"p_{b}" for b in range(1, 11)]].sum(axis=1), 1)
    p = uiaa("labels", "-", "--lam", "0.3", "--cap", "2", "--to", "parquet", input=AVA_LINES.encode())
    c = uiaa("convert", "-", tmp_path / "l.h5", input=p.stdout)
    assert c.returncode == 0, c.stderr
    attrs = read_table(tmp_path / "l.h5").attrs
    assert attrs["kind"] == "gauss-mv" and attrs["lam"] == 0.3 and attrs["cap"] == 2


@pytest.mark.parametrize("content, message", [
    ("1 953619 0 1 5 17 38 36 15 6 5 1 1 22\n", ":1: AVA line has 14 fields"),
    ("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 3 0 1 5 17 x 36 15 6 5 1 1 22 1396\n",
     ":2: not a whole number: 'x'"),
    ("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 3 0 1 -5 17 3 36 15 6 5 1 1 22 1396\n", ":2: image 3: negative"),
    ("1 953619 0 0 0 0 0 0 0 0 0 0 1 22 1396\n", ":1: image 953619 has no votes"),
    ("", "empty input"),
    ("\n\n  \n", "empty input"),
    ("image,score\nx,2.5\n", "unknown scale"),
    ("image,a,b\nx,1,2\n", "no score columns"),
    ("image,c1,c2,c3\nx,1,2\n", ":2: expected 4 columns, found 3"),
    ("image,c1,c2,c3\nx,1,2,\n", ":2: column 'c3': missing"),
    ("image,c1,c2\nx,1,zz\n", ":2: column 'c2': not a number: 'zz'"),
    ("image,c1,c2\nx,1,2\nx,3,4\n", "image x appears more than once (again at line 3)"),
    ("image,c1,c2,c_total\nx,0.5,0.2,10\n", ":2: fractions sum to 0.7000"),
    ("image,score\nx,11\nx,1\n", "unknown scale"),
])
def test_bad_input_is_one_line_exit_2(uiaa, tmp_path, content, message):
    path = tmp_path / "ratings.txt"
    path.write_text(content)
    out = tmp_path / "out.csv"
    r = uiaa("labels", path, "-o", out)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and "ratings.txt" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_usage_errors(uiaa, tmp_path):
    assert uiaa("labels", tmp_path / "missing.txt").returncode == 2
    r = uiaa("labels", "-", "--lam", "2", input=AVA_LINES.encode())
    assert r.returncode == 2 and "--lam" in r.stderr.decode()
    r = uiaa("labels", "-", "--scale", "5..1", input=AVA_LINES.encode())
    assert r.returncode == 2 and "--scale" in r.stderr.decode()
    r = uiaa("labels", "-", "--kind", "nope", input=AVA_LINES.encode())
    assert r.returncode == 2


def test_debug_shows_the_traceback(uiaa, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 2 3\n")
    r = uiaa("labels", path, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr.decode()


def test_quiet_and_broken_pipe(uiaa, test_data, tmp_path):
    import subprocess
    import sys

    r = uiaa("labels", test_data / "AVA_excerpt.txt", "-q")
    assert r.returncode == 0 and r.stderr == b""
    # Far more output than a pipe buffers (the excerpt's would fit), so the writer really meets a closed pipe.
    many = tmp_path / "AVA.txt"
    many.write_text("".join(f"{i} {800000 + i} {i % 7} 3 9 17 38 36 15 6 5 {i % 3} 1 22 1396\n" for i in range(20000)))
    p = subprocess.run(["bash", "-c", f"{sys.executable} -m uiaa_cli labels {many} "
                        "| head -2; echo status ${PIPESTATUS[0]}"], capture_output=True)
    assert p.stderr == b"" and p.stdout.count(b"\n") == 3
    assert p.stdout.endswith(b"status 0\n")


def test_labels_evaluate_convert_run_without_torch(uiaa, no_torch, tmp_path):
    labels = uiaa("labels", "-", "-o", tmp_path / "l.csv", input=AVA_LINES.encode(), env=no_torch)
    assert labels.returncode == 0, labels.stderr
    assert uiaa("convert", tmp_path / "l.csv", tmp_path / "l.h5", env=no_torch).returncode == 0
    preds = tmp_path / "p.csv"
    preds.write_text("image,score\n953619,5.5\n953958,4.0\n954184,6.1\n")
    r = uiaa("evaluate", preds, tmp_path / "l.h5", env=no_torch)
    assert r.returncode == 0, r.stderr
    assert b"SRCC" in r.stdout


def test_exact_means_decide_binary_labels_and_accuracy(uiaa, test_data, tmp_path):
    """Real AVA lines whose votes average exactly 5 are low in 'labels --kind binary', and 'evaluate'
    scores a perfect predictor (score = the exact mean, correctly rounded) at accuracy 1."""
    from fractions import Fraction

    ids, means = [], []
    for line in (test_data / "AVA_excerpt.txt").read_text().splitlines():
        c = [int(x) for x in line.split()[2:12]]
        ids.append(line.split()[1])
        means.append(Fraction(sum(b * n for b, n in zip(range(1, 11), c)), sum(c)))
    r = uiaa("labels", test_data / "AVA_excerpt.txt", "--kind", "binary", "-o", tmp_path / "l.csv")
    assert r.returncode == 0, r.stderr
    t = read_table(tmp_path / "l.csv")
    assert t["image"].tolist() == ids
    assert t["mean"].tolist() == [float(m) for m in means]  # written and read back correctly rounded
    fives = np.array([m == 5 for m in means])
    assert fives.sum() == 50 and not t["p_high"][fives].any()
    pd.DataFrame({"image": ids, "score": [float(m) for m in means]}).to_csv(tmp_path / "p.csv", index=False)
    e = uiaa("evaluate", tmp_path / "p.csv", tmp_path / "l.csv", "--json")
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["metrics"]["accuracy"] == 1.0
    d = uiaa("labels", test_data / "AVA_excerpt.txt", "--kind", "binary", "--delta", "1", "-o", tmp_path / "d.csv")
    kept = set(read_table(tmp_path / "d.csv")["image"].tolist())
    assert d.returncode == 0 and not kept & {i for i, m in zip(ids, means) if m == 6}
