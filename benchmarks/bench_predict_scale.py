"""``uiaa predict`` as the input grows 10x and 100x: flat memory, steady speed, resumable.

    python benchmarks/bench_predict_scale.py [--quick] [--sizes 1000,10000,100000]

A tiny model (an untrained ResNet-18 at 16 px, ``--weights none``) on tiny JPEGs (24x24, in
folders of 1,000), so that 100,000 images take minutes on 2 cores: what is measured is predict's
own machinery (finding the inputs, decoding in workers, streaming the output in committed parts,
joining them), which is what grows with the number of images, not the model.

1. For each size N: the real command ``uiaa predict FOLDERS -o out.parquet`` (batch 256, 2 decoding
   workers, the default engine), its wall time and the peak of the summed RSS of the process and
   its workers (sampled every 50 ms). images/s excludes start-up (the wall time of the same
   command on one image, measured first). Bars: peak memory within 1.15x at each 10x step;
   images/s steady (the larger runs within 15% of the 1,000-image run's).
2. kill -9 half way + ``--resume`` on the 10,000 images: the table equals the uninterrupted run's.

Prints a table with PASS/FAIL; exit status 1 if a bar is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import TreeMemory, machine  # noqa: E402

PER_FOLDER = 1000
SIZE = 16


def make_images(root: Path, n: int) -> list[Path]:
    """``n`` 24x24 JPEGs in folders of 1,000 (256 distinct pictures, written round-robin); the folders."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(256):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(out, "JPEG", quality=85)
        encoded.append(out.getvalue())
    folders = []
    for start in range(0, n, PER_FOLDER):
        folder = root / f"{start // PER_FOLDER:03d}"
        folder.mkdir(parents=True)
        for i in range(start, min(n, start + PER_FOLDER)):
            (folder / f"{i:06d}.jpg").write_bytes(encoded[i % 256])
        folders.append(folder)
    return folders


def make_model(path: Path) -> None:
    import torch

    from uiaa_cli.models import networks as models

    torch.manual_seed(0)
    model = models.build_model("resnet18", 10, "none")
    config = models.make_config(arch="resnet18", size=SIZE, bins=list(range(1, 11)), kind="gauss-mv",
                                targets=[f"p_{i}" for i in range(1, 11)], loss="ce")
    models.save_checkpoint(path, model, config)


def run(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak summed RSS in MiB) of a command and its children."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    with TreeMemory(proc.pid, every=0.05) as memory:
        status = proc.wait()
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command[:5])} ... failed with exit status {status}")
    return wall, memory.peak / 2**20


def killed_and_resumed(command: list[str], out: Path, n: int, env: dict) -> float:
    """Seconds of the resumed run, after a kill -9 once half the inputs are committed."""
    manifest = Path(str(out) + ".partial") / "manifest.json"
    proc = subprocess.Popen(command + ["-o", str(out)], stdout=subprocess.DEVNULL, env=env)
    done = 0
    while proc.poll() is None and done < n // 2:
        try:
            done = json.loads(manifest.read_text())["done"]
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit("the run finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"bench_predict_scale: killed at {done:,} of {n:,} inputs committed", file=sys.stderr)
    start = time.perf_counter()
    subprocess.run(command + ["-o", str(out), "--resume"], stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 images only, no resume check")
    parser.add_argument("--sizes", default=None, help="comma-separated image counts (default 1000,10000,100000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "1000,10000,100000")).split(",")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="uiaa-bench-scale-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.pt"
        make_model(model)
        started = time.perf_counter()
        folders = make_images(tmp / "img", max(sizes))
        print(f"bench_predict_scale: {max(sizes):,} JPEGs made in {time.perf_counter() - started:.0f} s; "
              f"resnet18 at {SIZE} px, batch {args.batch_size}, {args.workers} workers", file=sys.stderr)
        base = [sys.executable, "-m", "uiaa_cli", "predict", "-m", str(model), "--batch-size", str(args.batch_size),
                "--workers", str(args.workers)]
        one = next(folders[0].iterdir())
        run(base + [str(one)], env)  # the first run exports the ONNX graph: not counted
        startup, _ = run(base + [str(one), "-o", str(tmp / "one.parquet")], env)
        results = {}
        for n in sizes:
            inputs = [str(tmp / "img")] if n == max(sizes) and n == len(folders) * PER_FOLDER else \
                [str(f) for f in folders[: n // PER_FOLDER]]
            out = tmp / f"out-{n}.parquet"
            wall, peak = run(base + inputs + ["-o", str(out)], env)
            rows = pq.ParquetFile(out).metadata.num_rows
            if rows != n:
                raise SystemExit(f"predict wrote {rows} rows for {n} images")
            results[n] = (wall, peak, n / max(wall - startup, 1e-9))
            print(f"bench_predict_scale: {n:,} images: {wall:.1f} s, peak {peak:.0f} MiB", file=sys.stderr)

        resume_row = None
        if not args.quick and 10_000 in sizes:
            inputs = [str(f) for f in folders[:10]]
            out = tmp / "resumed.parquet"
            seconds = killed_and_resumed(base + inputs, out, 10_000, env)
            same = pq.read_table(out).equals(pq.read_table(tmp / "out-10000.parquet"))
            resume_row = ("kill -9 half way + --resume, 10,000 images", f"{'identical' if same else 'DIFFERENT'} "
                          f"({seconds:.1f} s to finish)", "identical", same)

    small = sizes[0]
    rows = [("start-up (one image, -o parquet)", f"{startup:.2f} s", "", None)]
    for n in sizes:
        wall, peak, rate = results[n]
        rows.append((f"{n:,} images -> Parquet", f"{wall:.1f} s, {rate:.0f} images/s, peak {peak:.0f} MiB", "", None))
    for before, n in zip(sizes, sizes[1:]):  # each step 10x the images
        growth = results[n][1] / results[before][1]
        rows.append((f"peak memory {before:,} -> {n:,}", f"{growth:.2f}x", "<= 1.15x", growth <= 1.15))
        speed = results[n][2] / results[small][2]
        rows.append((f"images/s {small:,} -> {n:,}", f"{speed:.2f}x", ">= 0.85x", speed >= 0.85))
    if resume_row:
        rows.append(resume_row)
    print(f"\nbench_predict_scale\nmachine: {machine()}\n")
    width = max(len(r[0]) for r in rows)
    value = max(len(r[1]) for r in rows)
    for what, measured, bar, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{what:<{width}}  {measured:<{value}}  {bar:<9} {verdict}".rstrip())
    if any(r[3] is False for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
