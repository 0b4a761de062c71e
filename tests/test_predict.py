"""``uiaa predict``: the real command in a subprocess, on real JPEG files, with a tiny untrained ResNet-18."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uiaa_cli.models.graphs import exported_graph
from uiaa_cli.tables.table import read_table

SIZE = 32
UIAA = f"{shlex.quote(sys.executable)} -m uiaa_cli"


def make_checkpoint(path: Path, outputs: int = 10, kind: str = "gauss-mv", size: int = SIZE, seed: int = 0) -> Path:
    """A real uiaa checkpoint of an untrained resnet18 (random weights, fixed seed)."""
    import torch

    from uiaa_cli.models import networks as models

    torch.manual_seed(seed)
    targets = ["p_low", "p_high"] if outputs == 2 else [f"p_{i}" for i in range(1, 11)]
    model = models.build_model("resnet18", outputs, "none")
    config = models.make_config(arch="resnet18", size=size, bins=list(range(1, 11)), kind=kind, targets=targets,
                                loss="ce")
    models.save_checkpoint(path, model, config)
    return path


def make_photos(folder: Path, n: int = 12, seed: int = 0) -> list[str]:
    """``n`` small JPEGs (some in a subfolder), each a different random picture; their ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        where = folder / ("sub" if i % 3 == 0 else "")
        where.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        pixels[:, : 8 + 4 * i] //= 4  # a dark band of varying width: different pictures score differently
        Image.fromarray(pixels).save(where / f"img{i:02d}.jpg", quality=90)
        ids.append(f"img{i:02d}")
    return ids


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    ids = make_photos(photos)
    (photos / "broken.jpg").write_bytes(Image.new("RGB", (8, 8)).tobytes()[:10])  # not a JPEG at all
    models = {"m10": make_checkpoint(root / "m10.pt"), "m2": make_checkpoint(root / "m2.pt", outputs=2, kind="binary"),
              "m64": make_checkpoint(root / "m64.pt", size=64)}
    for path in models.values():  # exported here, so the tests' stderr holds no note of an export
        exported_graph(path, note=lambda message: None)
    return {"root": root, "photos": photos, "ids": ids, **models}


def shell(command: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def lines(stdout: str | bytes) -> list[list[str]]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [line.split("\t") for line in text.splitlines()]


def test_sorted_folder_with_a_corrupt_file(setup):
    """`uiaa predict photos/ | sort -k2`: every good photo ranked, one stderr line, exit status 1."""
    result = shell(f"{UIAA} predict photos -m m10.pt --batch-size 5 | sort -k2; exit ${{PIPESTATUS[0]}}",
                   cwd=setup["root"])
    assert result.returncode == 1
    rows = lines(result.stdout)
    assert sorted(Path(p).stem for p, _ in rows) == setup["ids"]
    scores = [float(s) for _, s in rows]
    assert scores == sorted(scores) and len(set(scores)) > 1
    assert all(1.0 <= s <= 10.0 for s in scores)
    assert result.stderr.splitlines() == [result.stderr.strip()]  # exactly one line ...
    assert "photos/broken.jpg" in result.stderr and "Traceback" not in result.stderr  # ... naming the file


def test_head_ends_quietly(setup, tmp_path):
    """`| head -1` returns the first line at once; the broken pipe gives no traceback (workers included)."""
    many = tmp_path / "many"
    for i in range(4):
        make_photos(many / f"set{i}", n=12, seed=i)
    result = shell(f"{UIAA} predict {many} -m {setup['m10']} --batch-size 2 --workers 2 | head -1", cwd=tmp_path)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith(str(many))
    assert result.stderr == ""


def test_arrow_is_not_loaded_before_the_parts_are_joined(setup, tmp_path):
    """Parts are committed while the decoding workers run; loading arrow's library then added ~50 MiB
    to predict's process for the rest of the run (the peak of a long run was 1.16x a short one's).
    Parts are numpy archives, so arrow loads for the join only (the probe wraps ``parts.join``)."""
    probe = ("import sys\n"
             "from uiaa_cli.tables import parts\n"
             "join = parts.join\n"
             "def probed(*args, **kwargs):\n"
             "    print('arrow before the join:', 'pyarrow' in sys.modules, file=sys.stderr)\n"
             "    return join(*args, **kwargs)\n"
             "parts.join = probed\n"
             "from uiaa_cli.cli.app import main\n"
             "sys.argv[0] = 'uiaa'\n"
             "main()\n")
    out = tmp_path / "scores.parquet"
    result = subprocess.run([sys.executable, "-c", probe, "predict", str(setup["photos"]), "-m", str(setup["m10"]),
                             "--batch-size", "4", "--workers", "2", "-o", str(out)],
                            capture_output=True, text=True, env={**os.environ, "UIAA_COMMIT_SECONDS": "0"})
    assert result.returncode == 1, result.stderr  # photos/broken.jpg
    assert "arrow before the join: False" in result.stderr.splitlines()
    assert len(read_table(out)) == len(setup["ids"])


def test_called_from_python_with_a_text_stdout(setup, monkeypatch):
    """Lines go out as bytes (raw file names); a stdout with no bytes underneath (a notebook's, a
    StringIO) still gets them, as text."""
    import io

    from uiaa_cli.predict.pipeline import run_predict

    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    result = run_predict([str(setup["photos"] / "img01.jpg"), str(setup["photos"] / "img02.jpg")],
                         model=str(setup["m10"]), output=None, fmt=None, images=None, device="cpu", batch_size=4,
                         workers=0, progress=False, engine="onnx")
    assert result.scored == 2
    rows = lines(captured.getvalue())
    assert [Path(p).name for p, _ in rows] == ["img01.jpg", "img02.jpg"]
    assert all(1.0 <= float(score) <= 10.0 for _, score in rows)


def test_outputs_are_read_by_evaluate_and_a_cache_gives_the_same_scores(setup, uiaa, tmp_path):
    """A labels table's images -o csv/h5 (image, score, std, p_*, in input order) join in `uiaa evaluate`;
    its cache (made at the model's size) gives the same scores from the stored pixels."""
    photos = setup["photos"]
    names = [f"sub/{i}.jpg" if int(i[3:]) % 3 == 0 else f"{i}.jpg" for i in setup["ids"]]  # under photos/
    counts = np.random.default_rng(1).integers(0, 30, (len(names), 10)) + 1
    rows = "".join(f"{name},{','.join(map(str, c))}\n" for name, c in zip(names, counts))
    (tmp_path / "votes.csv").write_text("image," + ",".join(map(str, range(1, 11))) + "\n" + rows)
    labels = tmp_path / "labels.csv"
    made = uiaa("labels", tmp_path / "votes.csv", "-o", labels)
    assert made.returncode == 0, made.stderr

    out = {}
    for suffix in ("csv", "h5"):
        out[suffix] = tmp_path / f"preds.{suffix}"
        done = uiaa("predict", labels, "--images", photos, "-m", setup["m10"], "-o", out[suffix])
        assert done.returncode == 0, done.stderr
        preds = read_table(out[suffix])
        assert preds.names == ["image", "score", "std"] + [f"p_{i}" for i in range(1, 11)] + ["kind", "activation"]
        assert list(preds["image"]) == names  # input order
        probs = preds.matrix([f"p_{i}" for i in range(1, 11)])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(preds["score"], probs @ np.arange(1, 11), atol=1e-6)
        assert np.all(preds["std"] > 0) and len(set(preds["score"].round(6))) > 1
        evaluated = uiaa("evaluate", out[suffix], labels, "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        assert b'"images": 12' in evaluated.stdout
    np.testing.assert_array_equal(read_table(out["csv"])["score"], read_table(out["h5"])["score"])

    made = uiaa("cache", labels, "--images", photos, "--size", SIZE, "-o", tmp_path / "c.h5", "--store", "raw")
    assert made.returncode == 0, made.stderr
    from_cache = uiaa("predict", tmp_path / "c.h5", "-m", setup["m10"])
    assert from_cache.returncode == 0, from_cache.stderr
    assert [n for n, _ in lines(from_cache.stdout)] == names
    np.testing.assert_allclose([float(s) for _, s in lines(from_cache.stdout)], read_table(out["csv"])["score"],
                               atol=1e-4)
    other_size = uiaa("predict", tmp_path / "c.h5", "-m", setup["m64"])  # pixels of the wrong size: refused
    assert other_size.returncode == 2 and b"32 px" in other_size.stderr and b"64 px" in other_size.stderr


def test_stdin_list_of_paths_and_missing_file(setup, uiaa):
    """`-` reads paths from stdin; a missing path is one stderr line, the others are still scored."""
    files = sorted(str(p) for p in setup["photos"].glob("*.jpg") if p.name != "broken.jpg")
    result = uiaa("predict", "-", "-m", setup["m10"], input=("\n".join(files + ["nothere.jpg"]) + "\n").encode())
    assert result.returncode == 1
    assert [p for p, _ in lines(result.stdout)] == files
    assert result.stderr.decode().count("\n") == 1 and "nothere.jpg" in result.stderr.decode()


def test_model_from_env_and_newest_run(setup, uiaa, tmp_path):
    """No --model: $UIAA_MODEL, else the newest run under ./runs, else a clear message and exit 2."""
    image = setup["photos"] / "img01.jpg"
    env = {k: v for k, v in os.environ.items() if k != "UIAA_MODEL"}
    none = subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(image)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 2
    assert "no model" in none.stderr and "uiaa train" in none.stderr and "Traceback" not in none.stderr
    for name, source, age in (("old", setup["m10"], 100), ("new", setup["m2"], 0)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        target = tmp_path / "runs" / name / "best.pt"
        target.write_bytes(source.read_bytes())
        os.utime(target, (target.stat().st_mtime - age,) * 2)
        # with its exported graph (a copy of the same checkpoint: reused by its hash, no export to wait for)
        shutil.copy(source.with_name(f".{source.name}.onnx"), target.with_name(".best.pt.onnx"))
    newest = subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(image), str(image), "-o", "-"],
                            cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert newest.returncode == 0, newest.stderr
    preds = read_table("-", data=newest.stdout)
    assert preds.names == ["image", "score", "std", "p_low", "p_high", "kind", "activation"]  # runs/new: 2-set
    assert np.all(np.isnan(preds["std"]))  # a 2-set prediction has no std
    np.testing.assert_allclose(preds["score"], 10 * preds["p_high"], atol=1e-6)
    from_env = subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(image), "-o", "-"], cwd=tmp_path,
                              env={**env, "UIAA_MODEL": str(setup["m10"])}, capture_output=True, text=True,
                              timeout=60)
    assert from_env.returncode == 0 and "p_10" in from_env.stdout


def test_usage_errors_exit_2(setup, uiaa, tmp_path):
    assert uiaa("predict", "-m", setup["m10"]).returncode == 2  # no inputs
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = uiaa("predict", setup["photos"], "-m", corrupt)
    assert result.returncode == 2 and b"bad.pt" in result.stderr and b"Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert uiaa("predict", empty, "-m", setup["m10"]).returncode == 2


def test_torchrun_two_ranks_write_parts_that_rank_0_joins_in_input_order(setup, uiaa, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank scores every other input into its own part;
    rank 0 joins the parts into -o in input order; without -o each rank streams its own lines."""
    single = uiaa("predict", setup["photos"], "-m", setup["m10"], "--workers", "0", "-o", tmp_path / "one.csv")
    assert single.returncode == 1
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "uiaa_cli", "predict", str(setup["photos"]), "-m", str(setup["m10"]), "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun + ["-o", str(tmp_path / "two.csv")], capture_output=True, timeout=180, env=env)
    assert result.returncode != 0  # the broken file
    assert result.stderr.decode().count("photos/broken.jpg") == 1
    got, want = read_table(tmp_path / "two.csv"), read_table(tmp_path / "one.csv")
    assert list(got["image"]) == list(want["image"]) and len(got) == 12
    np.testing.assert_allclose(got["score"], want["score"], atol=2e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]  # the parts are gone

    streamed = subprocess.run(torchrun, capture_output=True, timeout=180, env=env)
    assert sorted(p for p, _ in lines(streamed.stdout)) == sorted(want["image"])


def test_preprocessing_is_trainings(setup):
    """The network sees exactly what training fed it: Scorer's normalisation equals data.Normalise."""
    import torch

    from uiaa_cli.models.networks import load_scorer
    from uiaa_cli.pixels.images import decode_image
    from uiaa_cli.training.data import Normalise

    scorer, config = load_scorer(setup["m10"])
    pixels = torch.from_numpy(np.stack([decode_image(p, SIZE) for p in sorted(setup["photos"].glob("img*.jpg"))]))
    seen = []
    hook = scorer.model.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        scorer(pixels.permute(0, 3, 1, 2).contiguous())
    hook.remove()
    trained = Normalise(config["mean"], config["std"], torch.device("cpu"), channels_last=False)(pixels)
    assert torch.equal(seen[0], trained)


def test_progress_bar_on_a_terminal_leaves_stdout_to_the_scores(setup):
    """With stderr a terminal, the progress bar and summary go there and every score still goes to stdout."""
    import pty
    import threading

    master, slave = pty.openpty()
    shown = []
    reader = threading.Thread(target=lambda: shown.append(drain(master)), daemon=True)
    reader.start()
    result = subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(setup["photos"]), "-m",
                             str(setup["m10"])], stdout=subprocess.PIPE, stderr=slave, timeout=60)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert result.returncode == 1
    assert sorted(Path(p).stem for p, _ in lines(result.stdout)) == setup["ids"]
    assert b"12 images scored, 1 failed" in shown[0] and b"broken.jpg" in shown[0]


def drain(fd: int) -> bytes:
    """Everything written to a pty until its other end closes."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other end is closed
            return data
        if not chunk:
            return data
        data += chunk


# ------------------------------------------------------------- issue 23: a new user's first hour


def test_a_checkpoint_with_nan_weights_is_refused(setup, uiaa, tmp_path):
    """A run whose training diverged: predict says so in one line and exits 2, never printing nan."""
    import torch

    state = torch.load(setup["m10"], weights_only=True)
    state["model"]["layer1.0.bn2.running_var"][3] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    # torch's engine in the command (its cheapest start), the default ONNX path (an export) in this process
    result = uiaa("predict", setup["photos"] / "img01.jpg", "-m", tmp_path / "diverged.pt", "--engine", "torch")
    assert result.returncode == 2 and result.stdout == b""
    message = result.stderr.decode()
    assert message.count("\n") == 1 and "NaN" in message and "diverged.pt" in message and "Traceback" not in message
    from uiaa_cli import Scorer
    from uiaa_cli.errors import UiaaError

    with pytest.raises(UiaaError, match="layer1.0.bn2.running_var"):
        Scorer(tmp_path / "diverged.pt", device="cpu")
    assert not list(tmp_path.glob(".diverged.pt*"))  # nothing exported from it


def test_non_finite_outputs_are_an_error_not_a_score():
    """Weights that are finite but blown up (~1e6) can still give NaN outputs: an error, whatever the engine."""
    from uiaa_cli.errors import UiaaError
    from uiaa_cli.predict.scorer import score_pixels

    class Blown:
        config = {"bins": list(range(1, 11)), "targets": [f"p_{i}" for i in range(1, 11)]}
        model = "blown.onnx"

        def __call__(self, pixels):
            return np.full(len(pixels), np.nan), np.full((len(pixels), 10), np.nan)

    with pytest.raises(UiaaError, match="NaN or infinite") as caught:
        score_pixels(Blown(), np.zeros((2, 32, 32, 3), np.uint8))
    assert str(caught.value).startswith("blown.onnx: ")


def test_no_model_finds_the_demos_or_names_those_nearby(setup, uiaa, tmp_path, monkeypatch):
    """No --model and no ./runs: ./*/latest (the demo's demo/latest) is used, with a note; without one,
    the error names the checkpoints it saw."""
    from uiaa_cli.errors import UiaaError
    from uiaa_cli.models.model_files import find_model

    monkeypatch.delenv("UIAA_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    shutil.copy(setup["m2"], tmp_path / "mine" / "model.pt")
    with pytest.raises(UiaaError, match=r"checkpoints here: mine/model\.pt\)"):
        find_model(None)
    run = tmp_path / "demo" / "run"
    run.mkdir(parents=True)
    shutil.copy(setup["m10"], run / "best.pt")
    shutil.copy(setup["m10"].with_name(".m10.pt.onnx"), run / ".best.pt.onnx")  # the same checkpoint's graph
    (tmp_path / "demo" / "latest").symlink_to("run", target_is_directory=True)  # what examples/demo.py leaves
    notes: list[str] = []
    assert find_model(None, note=notes.append) == Path("demo/run/best.pt")
    assert notes == ["no --model: using demo/run/best.pt (found by demo/latest); give --model to choose another"]
    env = {k: v for k, v in os.environ.items() if k != "UIAA_MODEL"}
    result = subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(setup["photos"] / "img01.jpg")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "using demo/run/best.pt" in result.stderr and result.stdout.endswith("img01.jpg\t" + result.stdout[-7:])


def test_help_says_what_the_score_is_and_ranks_safely(uiaa):
    text = " ".join(uiaa("predict", "--help").stdout.decode().split())  # as one line, however wrapped
    assert "sort -t$'\\t' -k2 -g" in text and "sort -k2 " not in text
    assert "1..10 for models trained on AVA" in text and "mean of that distribution" in text
