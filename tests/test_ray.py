"""Scoring on Ray Data (docs/python.md, "On a cluster"), on one local 2-CPU cluster shared by the
tests: the same numbers as ``uiaa predict`` on the same files, a failing image as a row, and a
table complete with no duplicates when an actor dies mid-run. Skipped without the ``ray`` extra."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_predict import make_checkpoint, make_photos

from uiaa_cli import read_table
from uiaa_cli.models.graphs import exported_graph

ray = pytest.importorskip("ray")
# One cluster for the module: make test's --dist loadfile keeps a file's tests on one worker.
NUMBERS = ["score", "std", *[f"p_{j}" for j in range(1, 11)]]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting one costs seconds); actors take half a CPU each, so
    two of them leave room for the reading and decoding tasks on 2 CPUs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray")
    make_photos(root / "photos", n=24)
    model = exported_graph(make_checkpoint(root / "m.pt"), note=lambda message: None) and root / "m.pt"
    shards = root / "shards"
    shards.mkdir()
    photos = sorted((root / "photos").rglob("*.jpg"))
    for s in range(4):  # 4 shards of 6 samples; shard 1 holds a corrupt image
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for i, photo in enumerate(photos[s::4]):
                data = photo.read_bytes() if (s, i) != (1, 2) else b"not a jpeg"
                info = tarfile.TarInfo(f"{s}{i:03d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                meta = f'{{"i": {i}}}'.encode()
                info = tarfile.TarInfo(f"{s}{i:03d}.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
    return {"root": root, "photos": root / "photos", "model": model, "shards": shards}


def predicted(uiaa, *inputs, model: Path, out: Path):
    result = uiaa("predict", *inputs, "-m", model, "-o", out)
    assert result.returncode in (0, 1), result.stderr
    return read_table(out), result


@pytest.fixture(scope="module")
def folder_scores(setup, tmp_path_factory):
    """``uiaa predict photos/ -o preds.csv`` (the real command), once for the module's tests."""
    from conftest import run_uiaa

    return predicted(run_uiaa, setup["photos"], model=setup["model"],
                     out=tmp_path_factory.mktemp("predict") / "preds.csv")[0]


@pytest.fixture(scope="module")
def shard_scores(setup, tmp_path_factory):
    """``uiaa predict SHARDS -o preds.parquet``: the corrupt sample is its line on stderr, exit 1."""
    from conftest import run_uiaa

    shards = sorted(str(p) for p in setup["shards"].glob("*.tar"))
    table, result = predicted(run_uiaa, *shards, model=setup["model"],
                              out=tmp_path_factory.mktemp("predict") / "preds.parquet")
    assert result.returncode == 1 and b"00001.tar: 1002" in result.stderr  # predict's own line for it
    return table


def test_read_images_through_the_scorer_gives_predicts_scores(cluster, setup, folder_scores):
    """The issue's form, unchanged: read_images -> map_batches(Scorer, ActorPoolStrategy(size=2))."""
    from uiaa_cli import Scorer

    command = folder_scores
    ds = ray.data.read_images(str(setup["photos"]), include_paths=True, mode="RGB")
    rows = ds.map_batches(Scorer, fn_constructor_kwargs={"model": str(setup["model"])}, batch_size=8,
                          compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5).to_pandas()
    assert len(rows) == len(command) == 24 and (rows["error"] == "").all()
    rows["image"] = [str(setup["root"] / p) if not os.path.isabs(p) else p for p in rows["path"]]
    by_path = rows.set_index(rows["image"].map(os.path.realpath)).sort_index()
    expected = command.set_index(command["image"].map(os.path.realpath)).sort_index()
    assert by_path.index.tolist() == expected.index.tolist()
    np.testing.assert_allclose(by_path[NUMBERS].to_numpy(float), expected[NUMBERS].to_numpy(float), rtol=0,
                               atol=1e-4)


def test_shards_score_as_predict_with_a_failing_image_and_a_killed_actor(cluster, setup, shard_scores, tmp_path):
    """WebDataset shards through score_dataset (decoding on CPU tasks), written to Parquet, while one
    actor dies mid-run: every sample once, the corrupt one a row with its error, the rest equal to
    ``uiaa predict`` on the same shards within 1e-6."""
    from uiaa_cli import Scorer, score_dataset

    marker = tmp_path / "killed"

    class DiesOnce(Scorer):
        """Kills its own process on its second batch, once in the whole run (the first to get there)."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    shards = sorted(str(p) for p in setup["shards"].glob("*.tar"))
    command = shard_scores
    ds = score_dataset(shards, setup["model"], actors=2, cpus_per_actor=0.5, decode_cpus=0.25, batch_size=2,
                       scorer=DiesOnce)
    ds.write_parquet(str(tmp_path / "scores"))
    assert marker.exists()  # an actor did die
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "scores")
    assert len(rows) == 24 and rows["image"].is_unique
    bad = rows[rows["error"] != ""]
    assert bad["image"].tolist() == ["1002"] and "not an image" in bad["error"].iloc[0]
    assert np.isnan(bad["score"].iloc[0])
    good = rows[rows["error"] == ""].set_index("image").sort_index()
    expected = command.set_index("image").sort_index()
    assert good.index.tolist() == expected.index.tolist()
    assert [Path(s).name for s in good["shard"]] == [Path(s).name for s in expected["shard"]]
    np.testing.assert_allclose(good[NUMBERS].to_numpy(float), expected[NUMBERS].to_numpy(float), rtol=0, atol=1e-6)
    assert (good["kind"] == "gauss-mv").all() and (good["activation"] == "softmax").all()


def test_the_docs_recipe_on_a_table_of_paths(cluster, setup, folder_scores, tmp_path, monkeypatch):
    """docs/python.md's "On a cluster" snippet, run as written (in a folder holding model.pt and
    paths.parquet, on this module's cluster): a Parquet of relative paths scored as predict scores them."""
    import pandas as pd

    photos = sorted(str(p.relative_to(setup["root"])) for p in setup["photos"].rglob("*.jpg"))[:8]
    work = tmp_path / "work"
    work.mkdir()
    for name in ("m.pt", ".m.pt.onnx"):
        os.link(setup["root"] / name, work / name.replace("m.pt", "model.pt"))
    os.symlink(setup["photos"], work / "photos")
    pd.DataFrame({"path": photos, "id": range(8)}).to_parquet(work / "paths.parquet")
    command = folder_scores.set_index(folder_scores["image"].map(os.path.realpath))
    command = command.loc[[os.path.realpath(setup["root"] / p) for p in photos]]
    text = (Path(__file__).resolve().parents[1] / "docs" / "python.md").read_text()
    snippets = [s for s in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M) if "score_dataset(" in s]
    assert len(snippets) == 1
    monkeypatch.chdir(work)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: None)  # this module's cluster
    exec(snippets[0], {})
    rows = pd.read_parquet(work / "scores")
    assert "id" in rows.columns, (rows.columns.tolist(), sorted(os.listdir(work / "scores")))
    rows = rows.sort_values("id")
    assert rows["image"].tolist() == photos and rows["id"].tolist() == list(range(8))
    np.testing.assert_allclose(rows[NUMBERS].to_numpy(float), command[NUMBERS].to_numpy(float), rtol=0, atol=1e-6)


def test_sources_are_told_apart(cluster, setup):
    """Which reader each kind of source gets (building a Dataset is lazy: nothing runs here)."""
    from uiaa_cli.errors import UiaaError
    from uiaa_cli.predict.on_ray import decode_batch, read_source
    from uiaa_cli.predict.scorer import image_pixels

    (setup["root"] / "paths.csv").write_text("path\nphotos/img01.jpg\n")
    assert read_source(ray, str(setup["shards"]), None)[1] == "webdataset"
    assert read_source(ray, str(setup["photos"]), None)[1] == "files"
    assert read_source(ray, [str(setup["root"] / "paths.csv")], None)[1] == "paths"
    with pytest.raises(UiaaError):
        read_source(ray, str(setup["root"] / "m.pt"), None)
    photo = setup["photos"] / "img01.jpg"
    out = decode_batch({"bytes": np.array([photo.read_bytes(), b"junk"], dtype=object),
                        "path": np.array([str(photo), "junk.jpg"])}, 32, "files")
    assert out["image"].tolist() == [str(photo), "junk.jpg"] and out["error"][0] == "" and out["error"][1]
    assert np.array_equal(out["pixels"][0], image_pixels(str(photo), 32))


def test_predict_ray_option_writes_predicts_table(cluster, setup, shard_scores, tmp_path):
    """``uiaa predict SHARDS --ray ADDRESS -o TABLE`` (run in this process, on this module's cluster):
    predict's table and columns, the corrupt sample one line on stderr and exit status 1."""
    from typer.testing import CliRunner

    from uiaa_cli.cli.app import app

    shards = sorted(str(p) for p in setup["shards"].glob("*.tar"))
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["predict", *shards, "-m", str(setup["model"]), "--ray", "auto", "-o", str(out),
                                      "--batch-size", "4"])
    assert result.exit_code == 1, result.output
    assert "00001.tar: 1002: not an image" in result.output
    table = read_table(out)
    assert list(table.columns) == ["image", "shard", "score", "std", *[f"p_{j}" for j in range(1, 11)], "kind",
                                   "activation"]
    assert len(table) == 23 and table["image"].is_unique and table.attrs["kind"] == "gauss-mv"
    expected = shard_scores.set_index("image").sort_index()
    np.testing.assert_allclose(table.set_index("image").sort_index()[NUMBERS].to_numpy(float),
                               expected[NUMBERS].to_numpy(float), rtol=0, atol=1e-6)


def test_predict_ray_reads_a_labels_table_as_predict_does(cluster, setup, folder_scores, tmp_path):
    """A labels table under ``--ray``: bare ids found as predict finds them, a name leaving the image
    root refused (its row an error), and a run where every image fails still a valid, empty table."""
    from typer.testing import CliRunner

    from uiaa_cli.cli.app import app

    photos = sorted(setup["photos"].rglob("*.jpg"))[:6]
    ids = [str(p.relative_to(setup["photos"]).with_suffix("")) for p in photos]  # AVA-style: no extension
    labels = tmp_path / "labels.csv"
    rows = [*ids, "../m", "no-such-id"]
    labels.write_text("image,1,2\n" + "".join(f"{name},3,4\n" for name in rows))
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["predict", str(labels), "--images", str(setup["photos"]), "-m",
                                      str(setup["model"]), "--ray", "auto", "-o", str(out), "--batch-size", "4"])
    assert result.exit_code == 1, result.output
    assert "../m: path escapes the image root" in result.output and "no-such-id" in result.output
    table = read_table(out)
    assert sorted(table["image"]) == sorted(ids)
    expected = folder_scores.set_index(folder_scores["image"].map(os.path.realpath))
    expected = expected.loc[[os.path.realpath(p) for p in photos]]
    got = table.set_index("image").loc[ids]
    np.testing.assert_allclose(got[NUMBERS].to_numpy(float), expected[NUMBERS].to_numpy(float), rtol=0, atol=1e-6)

    none = tmp_path / "none.csv"
    none.write_text("image,1,2\n../m,3,4\nno-such-id,1,1\n")
    empty = tmp_path / "empty.parquet"
    result = CliRunner().invoke(app, ["predict", str(none), "--images", str(setup["photos"]), "-m",
                                      str(setup["model"]), "--ray", "auto", "-o", str(empty)])
    assert result.exit_code == 1, result.output
    assert len(read_table(empty)) == 0
