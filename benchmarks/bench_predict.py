"""``uiaa predict`` throughput against the model alone, and its memory as the input grows 10x.

    python benchmarks/bench_predict.py [--quick] [--threads 2]

1. Throughput. A folder of 640x480 JPEGs scored by the real ``uiaa predict`` (ResNet-50, 224 px,
   ``--threads`` torch threads) against the same model's forward pass on uint8 tensors already in
   memory (``models.Scorer``, the module predict runs, normalisation included), same batch size.
   Predict's rate is its steady state: the images after its first batch, from that batch's output
   to the last batch's, timed by reading its stdout as it streams (start-up, i.e. importing torch,
   loading the model and the first batch, is reported apart; so is the interpreter's exit).
   Forward-only is measured before and after predict and averaged, because the machine may be
   shared. Bar: predict >= 80% of forward-only.
2. Memory. Peak RSS of ``uiaa predict -o preds.csv`` (the main process and its decoding workers,
   summed, sampled every 50 ms) on N and on 10N images. Bar: within 10%.

Prints a table with PASS/FAIL; exit status 1 if a bar is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct 640x480 photo-like JPEGs (smooth shapes + grain; ~40-60 KB, like real photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        base = rng.uniform(0, 255, 3).astype(np.float32)
        fx, fy = rng.uniform(0.005, 0.03, 2)
        wave = (np.sin(x * fx + i) * np.cos(y * fy - i))[..., None] * rng.uniform(30, 90, 3)
        grain = rng.normal(0, 12, (480, 640, 1))
        pixels = np.clip(base + wave + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i:05d}.jpg", quality=88)


def make_model(path: Path, arch: str, size: int) -> None:
    import torch

    from uiaa_cli import models

    torch.manual_seed(0)
    model = models.build_model(arch, 10, "none")
    config = models.make_config(arch=arch, size=size, bins=list(range(1, 11)), kind="gauss-mv",
                                targets=[f"p_{i}" for i in range(1, 11)], loss="ce")
    models.save_checkpoint(path, model, config)


def forward_rate(model_path: Path, batch: int, batches: int, threads: int) -> float:
    """Images/s of the Scorer on uint8 batches already in memory (one warm-up batch first)."""
    import torch

    from uiaa_cli.models import load_scorer

    torch.set_num_threads(threads)
    scorer, config = load_scorer(model_path)
    size = int(config["size"])
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        scorer(x)
        start = time.perf_counter()
        for _ in range(batches):
            scorer(x)
    return batch * batches / (time.perf_counter() - start)


def predict_rate(folder: Path, model_path: Path, batch: int, threads: int, workers: int) -> tuple[float, float, int]:
    """Steady-state images/s of ``uiaa predict`` (first output line to last), start-up seconds, lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "uiaa_cli", "predict", str(folder), "-m", str(model_path),
               "--batch-size", str(batch), "--workers", str(workers), "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    count, first, last = 0, 0.0, 0.0
    for _line in proc.stdout:  # predict flushes once per batch: a batch's lines arrive together
        count += 1
        last = time.perf_counter()
        if count == batch:
            first = last  # the first batch is out: start-up is over
    # The interpreter's exit after the last batch is start-up's mirror image: not counted either.
    if proc.wait() != 0:
        raise SystemExit(f"uiaa predict failed with exit status {proc.returncode}")
    return (count - batch) / (last - first), first - start, count


def peak_rss(command: list[str], env: dict) -> float:
    """Peak of the summed RSS (MiB) of a command and its children, sampled every 50 ms."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    root = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    status = proc.wait()
    done.set()
    thread.join()
    if status != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed with exit status {status}")
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a rough figure in about a minute)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the model (default 2)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="predict's decoding processes")
    parser.add_argument("-n", type=int, default=None, help="images for the throughput run (default 96, quick 48)")
    parser.add_argument("--mem-n", type=int, default=None, help="N of the memory run (default 32, quick 16)")
    args = parser.parse_args()
    n = args.n or (48 if args.quick else 96)
    mem_n = args.mem_n or (16 if args.quick else 32)  # at least one full batch: the peak is per batch
    batch = args.batch_size

    with tempfile.TemporaryDirectory(prefix="uiaa-bench-predict-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.pt"
        make_model(model, args.arch, args.size)
        big = tmp / "big"
        make_jpegs(big, max(n, 10 * mem_n))
        photos, small, ten = tmp / "photos", tmp / "small", tmp / "ten"
        for folder, count in ((photos, n), (small, mem_n), (ten, 10 * mem_n)):
            folder.mkdir()
            for f in sorted(big.iterdir())[:count]:
                os.link(f, folder / f.name)
        size_kb = sum(f.stat().st_size for f in photos.iterdir()) / n / 1024
        print(f"bench_predict: {args.arch} at {args.size} px, batch {batch}, {args.threads} threads, "
              f"{args.workers} workers; {n} JPEGs of 640x480 (~{size_kb:.0f} KB each)", file=sys.stderr)

        steps = max(2, n // batch - 1)
        forward_before = forward_rate(model, batch, steps, args.threads)
        rate, startup, lines = predict_rate(photos, model, batch, args.threads, args.workers)
        forward_after = forward_rate(model, batch, steps, args.threads)
        if lines != n:
            raise SystemExit(f"predict scored {lines} of {n} images")
        forward = (forward_before + forward_after) / 2
        ratio = rate / forward

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        mem = {}
        for label, folder in (("N", small), ("10N", ten)):
            mem[label] = peak_rss([sys.executable, "-m", "uiaa_cli", "predict", str(folder), "-m", str(model),
                                   "--batch-size", str(batch), "--workers", str(args.workers), "--device", "cpu",
                                   "-o", str(tmp / f"preds-{label}.csv")], env)
        growth = mem["10N"] / mem["N"] - 1

    rows = [
        ("forward only, in memory", f"{forward:.2f} images/s", f"(before {forward_before:.2f}, after "
                                                                f"{forward_after:.2f})", ""),
        ("uiaa predict, 640x480 JPEGs", f"{rate:.2f} images/s", f"(start-up {startup:.1f} s)", ""),
        ("predict / forward", f"{ratio:.1%}", ">= 80%", "PASS" if ratio >= 0.8 else "FAIL"),
        (f"peak RSS, {mem_n} images", f"{mem['N']:.0f} MiB", "", ""),
        (f"peak RSS, {10 * mem_n} images", f"{mem['10N']:.0f} MiB", "", ""),
        ("memory growth N -> 10N", f"{growth:+.1%}", "within 10%", "PASS" if abs(growth) <= 0.10 else "FAIL"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{'measure':<{width[0]}}  {'value':<{width[1]}}  {'bar':<{width[2]}}  result")
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}".rstrip())
    if any(r[3] == "FAIL" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
