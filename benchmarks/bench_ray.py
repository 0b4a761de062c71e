"""Ray Data against ``uiaa predict`` on the same shards, on the same machine (docs/python.md).

    python benchmarks/bench_ray.py                    # 2,000 images in 8 shards (~3 min on a shared 2-core VM)
    python benchmarks/bench_ray.py --images 400       # a rough figure

2,000 photo-like JPEGs (320x240) in 8 WebDataset shards, a ResNet-18 at 128 px (untrained weights,
its ONNX graph exported first), on a local Ray cluster of 2 CPUs (``ray.init(num_cpus=2)``, started
before the clock runs, as a cluster is). Three runs:

1. ``uiaa predict shards/*.tar -o scores.parquet``, launch to exit (start-up included);
2. ``score_dataset(shards, model, actors=2, ...).write_parquet(...)``: reading, decoding on CPU tasks,
   2 actors of ONNX Runtime, from the start of execution to the last file written (the actors'
   start-up included);
3. the same with one actor killed (``os._exit``) on its third batch: Ray restarts it and retries.

Bars: each Ray table is predict's, row for row (the same ``(shard, image)`` keys, once each, scores
within 1e-6); Ray's images/s (run 2) >= 80% of predict's. Prints a table with PASS/FAIL; exit status
1 if a bar is missed, 0 with a note if Ray is not installed (the ``ray`` extra).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import REPO, report

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from photo_files import make_checkpoint  # noqa: E402  - the tests' untrained uiaa checkpoint, exported

NUMBERS = ["score", "std", *[f"p_{j}" for j in range(1, 11)]]


def make_shards(folder: Path, images: int, shards: int, seed: int = 0) -> list[Path]:
    """``images`` distinct photo-like 320x240 JPEGs in ``shards`` WebDataset tars, a .json beside each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    paths = [folder / f"{s:05d}.tar" for s in range(shards)]
    tars = [tarfile.open(p, "w") for p in paths]
    for i in range(images):
        base = rng.uniform(0, 255, 3).astype(np.float32)
        fx, fy = rng.uniform(0.01, 0.06, 2)
        wave = (np.sin(x * fx + i) * np.cos(y * fy - i))[..., None] * rng.uniform(30, 90, 3)
        pixels = np.clip(base + wave + rng.normal(0, 12, (240, 320, 1)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=88)
        for name, data in ((f"{i:06d}.jpg", buffer.getvalue()), (f"{i:06d}.json", b'{"i": %d}' % i)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tars[i % shards].addfile(info, io.BytesIO(data))
    for tar in tars:
        tar.close()
    return paths


def predict_run(shards: list[Path], model: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", *map(str, shards), "-m", str(model), "-o", str(out),
                    "-q"], check=True)
    return time.perf_counter() - start


def ray_run(shards: list[Path], model: Path, out: Path, actors: int, kill: Path | None = None) -> float:
    from uiaa_cli import Scorer, score_dataset

    class DiesOnce(Scorer):
        """Kills its own process on its third batch, once in the whole run."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if kill is not None and self.calls == 3:
                try:
                    os.close(os.open(kill, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    start = time.perf_counter()
    ds = score_dataset([str(s) for s in shards], model, actors=actors, cpus_per_actor=0.5, decode_cpus=0.5,
                       batch_size=32, scorer=DiesOnce if kill is not None else Scorer)
    ds.write_parquet(str(out))
    return time.perf_counter() - start


def same_table(ray_folder: Path, predict_table: Path) -> tuple[bool, str]:
    """Whether Ray's rows are predict's: the same (shard, image) keys once each, numbers within 1e-6."""
    import pandas as pd

    ours = pd.read_parquet(ray_folder)
    theirs = pd.read_parquet(predict_table)
    ours["shard"] = [Path(s).name for s in ours["shard"]]
    theirs["shard"] = [Path(s).name for s in theirs["shard"]]
    duplicates = int(ours.duplicated(["shard", "image"]).sum())
    ours = ours.set_index(["shard", "image"]).sort_index()
    theirs = theirs.set_index(["shard", "image"]).sort_index()
    if duplicates or not ours.index.equals(theirs.index) or (ours["error"] != "").any():
        return False, f"{len(ours)} rows, {duplicates} duplicated, predict {len(theirs)}"
    worst = float(np.abs(ours[NUMBERS].to_numpy(float) - theirs[NUMBERS].to_numpy(float)).max())
    return worst <= 1e-6, f"{len(ours)} rows, max diff {worst:.1e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print("bench_ray: Ray is not installed (pip install 'uiaa[ray]'); nothing measured")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_CACHE_HOME", str(root / "cache"))
        shards = make_shards(root / "shards", args.images, args.shards)
        model = make_checkpoint(root / "model.pt", size=args.size)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            ray_seconds = ray_run(shards, model, root / "ray", args.actors)
            predict_seconds = predict_run(shards, model, root / "predict.parquet")
            killed_seconds = ray_run(shards, model, root / "ray-killed", args.actors, kill=root / "killed")
        finally:
            ray.shutdown()
        same, same_note = same_table(root / "ray", root / "predict.parquet")
        after_kill, kill_note = same_table(root / "ray-killed", root / "predict.parquet")
        killed = (root / "killed").exists()
    n = args.images
    ray_rate, predict_rate = n / ray_seconds, n / predict_seconds
    rows = [
        (f"uiaa predict, {n:,} images in {args.shards} shards", f"{predict_rate:.1f} img/s ({predict_seconds:.1f} s)",
         "", True),
        (f"Ray Data, {args.actors} actors (2-CPU cluster)", f"{ray_rate:.1f} img/s ({ray_seconds:.1f} s)", "", True),
        ("Ray / predict", f"{ray_rate / predict_rate:.2f}", ">= 0.80", ray_rate >= 0.8 * predict_rate),
        ("Ray's table = predict's", same_note, "equal", same),
        ("one actor killed: table complete", f"{kill_note} ({killed_seconds:.1f} s)", "equal", after_kill and killed),
    ]
    ok = report(f"Ray Data against uiaa predict (resnet18 at {args.size} px, ONNX Runtime on CPU)", rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
