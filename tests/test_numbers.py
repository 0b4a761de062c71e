"""Numbers and inputs that must be refused, through the real ``uiaa`` command (issues 9 and 11):
option values, vote counts, hand-edited labels tables, id lists and image folders that match nothing.

Every refusal is exit status 2 and exactly one ``uiaa CMD: error:`` line on stderr naming the file or
option, with no traceback and no warning, before any work.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables.table import read_table
from uiaa_cli.targets.labels import matches_ids, read_id_list

AVA = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 953958 10 7 15 26 26 21 10 8 1 2 1 21 1396\n"


def one_error_line(r, command: str, *fragments: str) -> str:
    """The run failed with status 2 and one ``uiaa COMMAND: error:`` line holding every fragment."""
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith(f"uiaa {command}: error: "), err
    assert "Traceback" not in err and "Warning" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ------------------------------------------------------------------------------ option values

OPTION_CASES = [
    ("labels", ["--lam", "1.5"], "--lam"), ("labels", ["--lam", "nan"], "--lam"),
    ("labels", ["--cap", "0"], "--cap"), ("labels", ["--cap", "inf"], "--cap"),
    ("labels", ["--delta", "-1"], "--delta"), ("labels", ["--delta", "nan"], "--delta"),
    ("labels", ["--threshold", "nan"], "--threshold"), ("labels", ["--threshold", "-inf"], "--threshold"),
    ("labels", ["--min-votes", "-1"], "--min-votes"),
    ("evaluate", ["--threshold", "nan"], "--threshold"), ("evaluate", ["--threshold", "inf"], "--threshold"),
    ("cache", ["--size", "0"], "--size"), ("cache", ["--size", "5000"], "--size"),
    ("cache", ["--workers", "0"], "--workers"), ("cache", ["--workers", "-2"], "--workers"),
    ("train", ["--epochs", "0"], "--epochs"), ("train", ["--batch-size", "1"], "--batch-size"),
    ("train", ["--momentum", "-0.1"], "--momentum"), ("train", ["--momentum", "nan"], "--momentum"),
    ("train", ["--weight-decay", "-1e-4"], "--weight-decay"), ("train", ["--weight-decay", "inf"], "--weight-decay"),
    ("train", ["--val-frac", "1"], "--val-frac"), ("train", ["--val-frac", "-0.1"], "--val-frac"),
    ("train", ["--workers", "-1"], "--workers"), ("train", ["--size", "4"], "--size"),
    ("train", ["--lr", "0,1e-4"], "--lr"), ("train", ["--lr", "nan"], "--lr"), ("train", ["--lr", "1e-3,x"], "--lr"),
    ("train", ["--seed", "-1"], "--seed"),
    ("predict", ["--batch-size", "0"], "--batch-size"), ("predict", ["--workers", "-1"], "--workers"),
]


@pytest.mark.parametrize("command, option, name", OPTION_CASES, ids=[f"{c}{' '.join(o)}" for c, o, _ in OPTION_CASES])
def test_bad_option_values_are_one_line_before_any_work(uiaa, tmp_path, command, option, name):
    # The inputs do not exist: had the command started its work, it would complain about them instead.
    inputs = {"labels": ["missing.txt"], "evaluate": ["p.csv", "l.csv"], "cache": ["l.csv", "-o", "c.h5"],
              "train": ["l.csv", "--out", str(tmp_path / "run")], "predict": ["photo.jpg"]}[command]
    r = uiaa(command, *inputs, *option, cwd=tmp_path)
    one_error_line(r, command, f"'{name}'")
    assert not (tmp_path / "run").exists()


def test_good_edge_values_are_accepted(uiaa, tmp_path):
    r = uiaa("labels", "-", "--lam", "1", "--delta", "0", "--min-votes", "0", "--threshold", "-3",
             input=AVA.encode())
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------ vote counts


@pytest.mark.parametrize("content, where, message", [
    ("1 2 -9223372036854775808 0 0 1 0 0 0 0 0 0 0 0 1\n", ":1", "number too large"),
    ("1 2 99999999999999999999 0 0 1 0 0 0 0 0 0 0 0 1\n", ":1", "number too large"),
    ("1 2 9007199254740993 1 0 1 0 0 0 0 0 0 0 0 1\n", ":1", "too large"),
    ("1 2 -1 0 0 1 0 0 0 0 0 0 0 0 1\n", ":1", "negative"),
    ("1 2 0 0 0 1 0 0 0 0 0 0 0 0 1\n2 3 x 0 0 1 0 0 0 0 0 0 0 0 1\n", ":2", "not a whole number"),
    ("image,1,2,3\na,1e308,1e308,1\n", ":2", "too large"),
    ("image,1,2,3\na,1,2,3\nb,9223372036854775808,1,1\n", ":3", "too large"),
    ("image,1,2,3\na,-9223372036854775808,1,1\n", ":2", "negative"),
    ("image,1,2,3\na,1,two,3\n", ":2", "not a number"),
    ("image,1,2,3\na,1,inf,3\n", ":2", "non-finite"),
    ("image,c1,c2,c3,c_total\na,0.5,0.25,0.25,2.5\n", ":2", "not a whole number of votes"),
])
def test_bad_counts_are_refused_with_file_and_line(uiaa, tmp_path, content, where, message):
    path = tmp_path / "ratings.txt"
    path.write_text(content)
    r = uiaa("labels", path, "-o", tmp_path / "out.csv")
    one_error_line(r, "labels", f"ratings.txt{where}", message)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("fmt, content, message", [
    ("koniq", "image,1,2,3\na,1,2,3\n", "no column of vote totals"),
    ("long", "image,1,2,3\na,1,2,3\n", "not a long table of votes"),
    ("long", "image,rater,grade\na,1,5\n", "not a long table of votes"),
    ("counts", "image,rater,score\na,1,5\n", "no score columns"),
])
def test_a_table_that_does_not_fit_the_format_is_one_line(uiaa, tmp_path, fmt, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    one_error_line(uiaa("labels", path, "--format", fmt), "labels", "t.csv", message)


def test_long_table_takes_the_score_column_by_name(uiaa, tmp_path):
    """image,rater,score: the rater ids (10, 20, 30) must not be taken for votes."""
    path = tmp_path / "votes.csv"
    path.write_text("image,rater,score\na,10,5\na,20,4\nb,30,1\na,30,5\n")
    for extra in ([], ["--format", "long"]):
        r = uiaa("labels", path, "--kind", "rsd", "--scale", "1..5", "-o", tmp_path / "l.csv", *extra)
        assert r.returncode == 0, r.stderr
        t = read_table(tmp_path / "l.csv")
        assert t["image"].tolist() == ["a", "b"]
        assert t["votes"].tolist() == [3, 1]
        assert t["mean"].tolist() == [14 / 3, 1.0]
        assert t["5"].tolist() == [2 / 3, 0.0]


def test_a_byte_order_mark_before_ava_is_ignored(uiaa, tmp_path):
    path = tmp_path / "AVA.txt"
    path.write_bytes(b"\xef\xbb\xbf" + AVA.encode())
    r = uiaa("labels", path, "-o", tmp_path / "l.csv")
    assert r.returncode == 0, r.stderr
    assert read_table(tmp_path / "l.csv")["image"].tolist() == ["953619", "953958"]


def test_no_runtime_warning_even_on_extreme_counts(uiaa, tmp_path):
    """Counts near the limit: exact statistics, no numpy warning on stderr (with or without -q)."""
    path = tmp_path / "big.csv"
    path.write_text("image,1,2,3\na,4503599627370496,4503599627370494,1\nb,0,0,7\n")
    r = uiaa("labels", path, "--kind", "rsd", "-o", tmp_path / "l.csv", "-q")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    t = read_table(tmp_path / "l.csv")
    from fractions import Fraction

    n = 4503599627370496 + 4503599627370494 + 1  # 2^53 - 1 votes: the most accepted
    assert t["mean"][0] == float(Fraction(4503599627370496 + 2 * 4503599627370494 + 3, n))


# ------------------------------------------------------------------------------ id lists


def test_id_lists_in_every_shape(tmp_path):
    plain = tmp_path / "plain.jpgl"
    plain.write_bytes(b"\xef\xbb\xbf953619\r\n\r\n# a comment\r\n953958 extra\r\n")
    assert read_id_list(str(plain)).tolist() == ["953619", "953958"]
    table = tmp_path / "labels.csv"
    table.write_text("image,mean\n953619,5.5\nphoto 2.jpg,4\n")
    assert read_id_list(str(table)).tolist() == ["953619", "photo 2.jpg"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(b"\xef\xbb\xbfimage_a,image_b,distance\r\n1.jpg,2.jpg,3\r\n4.jpg,1.jpg,0\r\n")
    assert sorted(read_id_list(str(pairs)).tolist()) == ["1.jpg", "1.jpg", "2.jpg", "4.jpg"]
    header_only = tmp_path / "image.txt"
    header_only.write_text("image\n12\n13\n")
    assert read_id_list(str(header_only)).tolist() == ["12", "13"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(UiaaError, match="no image ids"):
        read_id_list(str(empty))


def test_ids_match_by_stem_both_ways():
    images = np.array(["1", "2.jpg", "3.JPG", "4.png", "v1.2"])
    assert matches_ids(images, np.array(["1.jpg", "2", "3", "4.png"])).tolist() == [True, True, True, True, False]
    assert matches_ids(images, np.array(["v1"])).tolist() == [False] * 5  # '.2' is not an image extension


def test_only_and_exclude_with_a_dedupe_table_and_jpg_names(uiaa, tmp_path):
    ava = tmp_path / "AVA.txt"
    ava.write_text(AVA)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b,distance\n953958.jpg,777.jpg,2\n")
    r = uiaa("labels", ava, "--exclude", pairs, "-o", tmp_path / "l.csv")
    assert r.returncode == 0, r.stderr
    assert read_table(tmp_path / "l.csv")["image"].tolist() == ["953619"]


@pytest.mark.parametrize("option", ["--only", "--exclude"])
def test_an_id_list_that_matches_nothing_is_one_error(uiaa, tmp_path, option):
    ava = tmp_path / "AVA.txt"
    ava.write_text(AVA)
    ids = tmp_path / "ids.txt"
    ids.write_text("111\n222\n")
    r = uiaa("labels", ava, option, ids, "-o", tmp_path / "l.csv")
    one_error_line(r, "labels", "ids.txt", "'111'", "'953619'", option)
    assert not (tmp_path / "l.csv").exists() and not list(tmp_path.glob(".l.csv*"))


# ------------------------------------------------------------------------------ labels tables


def small_labels(folder, n: int = 4) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return pd.DataFrame({"image": [str(i) for i in range(n)], "votes": [10] * n, "mean": [5.5, 4.0, 6.0, 3.0][:n],
                         "std": [1.0] * n, "1": [0.5] * n, "2": [0.5] * n, "p_1": [0.4] * n, "p_2": [0.6] * n})


@pytest.mark.parametrize("column, value", [("mean", "inf"), ("p_2", "nan"), ("std", "-inf"), ("p_1", "1.5"),
                                           ("2", "nan")])
def test_hand_edited_labels_table_is_refused(uiaa, tmp_path, column, value):
    frame = small_labels(tmp_path / "img")
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = value
    labels = tmp_path / "img" / "labels.csv"
    frame.to_csv(labels, index=False)
    preds = tmp_path / "p.csv"
    pd.DataFrame({"image": frame["image"], "score": [5.0, 4.0, 6.0, 3.0]}).to_csv(preds, index=False)
    where = ("labels.csv", "image 2 (row 3)", f"'{column}'")
    one_error_line(uiaa("evaluate", preds, labels, "--json"), "evaluate", *where)
    one_error_line(uiaa("cache", labels, "-o", tmp_path / "c.h5", "--size", "16", env={"UIAA_RESIZE": "pillow"}),
                   "cache", *where)
    assert not (tmp_path / "c.h5").exists()


def test_train_refuses_a_hand_edited_labels_table_before_training(uiaa, tmp_path):
    frame = small_labels(tmp_path / "img")
    frame.loc[1, "mean"] = float("inf")
    labels = tmp_path / "img" / "labels.csv"
    frame.to_csv(labels, index=False)
    r = uiaa("train", labels, "--arch", "resnet18", "--weights", "none", "--size", "16", "--epochs", "1",
             "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run", "--workers", "0")
    one_error_line(r, "train", "labels.csv", "image 1 (row 2)", "'mean'")


def test_evaluate_threshold_on_exact_means(uiaa, tmp_path):
    """--threshold 5.5 against means 5.5: not high; accuracy a number, valid JSON (no NaN)."""
    frame = small_labels(tmp_path / "img")
    labels = tmp_path / "l.csv"
    frame.to_csv(labels, index=False)
    preds = tmp_path / "p.csv"
    pd.DataFrame({"image": frame["image"], "score": [5.5, 5.6, 6.0, 3.0]}).to_csv(preds, index=False)
    r = uiaa("evaluate", preds, labels, "--json", "--threshold", "5.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["accuracy"] == 0.75  # 5.6 > 5.5 but the mean 4.0 is not


# ------------------------------------------------------------------------------ image folders


def test_cache_with_a_folder_where_no_image_resolves_is_one_error(uiaa, tmp_path):
    frame = small_labels(tmp_path / "img")
    labels = tmp_path / "labels.csv"
    frame.to_csv(labels, index=False)
    (tmp_path / "empty").mkdir()
    r = uiaa("cache", labels, "--images", tmp_path / "empty", "-o", tmp_path / "c.h5", "--size", "16")
    one_error_line(r, "cache", "empty", "none of the 4 images", "--images")
    assert not (tmp_path / "c.h5").exists() and not list(tmp_path.glob("c.h5*"))
    r = uiaa("cache", labels, "-o", tmp_path / "c.h5", "--size", "16")  # default: the table's folder, no images
    one_error_line(r, "cache", "none of the 4 images")
    r = uiaa("cache", labels, "--images", tmp_path / "img", "-o", tmp_path / "c.h5", "--size", "16",
             env={"UIAA_RESIZE": "pillow"})
    assert r.returncode == 0, r.stderr


def test_train_with_a_folder_where_no_image_resolves_is_one_error(uiaa, tmp_path):
    frame = small_labels(tmp_path / "img")
    labels = tmp_path / "labels.csv"
    frame.to_csv(labels, index=False)
    r = uiaa("train", labels, "--arch", "resnet18", "--weights", "none", "--size", "16", "--epochs", "1",
             "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run", "--workers", "0")
    one_error_line(r, "train", "none of the 4 images")


def test_image_table_finds_a_few_images_among_many_missing(tmp_path):
    """Some images present (the others are skipped one by one later): not an error."""
    from uiaa_cli.pixels.images import image_table

    frame = small_labels(tmp_path / "img", 2)
    names = [f"missing{i}" for i in range(100)] + ["1"]
    pd.DataFrame({"image": names, "mean": [5.0] * len(names)}).to_csv(tmp_path / "l.csv", index=False)
    table, root = image_table(str(tmp_path / "l.csv"), tmp_path / "img")
    assert len(table) == 101 and len(frame) == 2
    pd.DataFrame({"image": names[:-1], "mean": [5.0] * 100}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(UiaaError, match="none of the 100 images"):
        image_table(str(tmp_path / "l.csv"), tmp_path / "img")


def test_predict_of_a_labels_table_with_a_folder_where_no_image_resolves(uiaa, tmp_path):
    import torch

    from uiaa_cli.models import networks as models

    torch.manual_seed(0)
    model = models.build_model("resnet18", 10, "none")
    models.save_checkpoint(tmp_path / "m.pt", model, models.make_config(
        arch="resnet18", size=16, bins=list(range(1, 11)), kind="gauss-mv",
        targets=[f"p_{i}" for i in range(1, 11)], loss="ce"))
    frame = small_labels(tmp_path / "img")
    frame.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "empty").mkdir()
    r = uiaa("predict", tmp_path / "labels.csv", "--images", tmp_path / "empty", "-m", tmp_path / "m.pt",
             "--workers", "0", "--device", "cpu", "-q")  # -q: no line about exporting the model first
    one_error_line(r, "predict", "empty", "none of the 4 images", "--images")
    assert r.stdout == b""


def test_id_list_from_an_hdf5_table(uiaa, tmp_path):
    ava = tmp_path / "AVA.txt"
    ava.write_text(AVA)
    assert uiaa("labels", ava, "-o", tmp_path / "all.h5").returncode == 0
    assert read_id_list(str(tmp_path / "all.h5")).tolist() == ["953619", "953958"]
