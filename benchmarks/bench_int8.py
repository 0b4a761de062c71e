"""int8 against fp32 ONNX: speed (ResNet-50 at 224 px) and ranking (the demo's model on held-out images).

    python benchmarks/bench_int8.py [--quick] [--threads 2] [--demo DIR]

1. Model alone. A ResNet-50 checkpoint (random weights: speed does not depend on them) exported to
   fp32 ONNX and quantized by ``uiaa_cli.models.quantize`` (calibrated on 640x480 JPEGs decoded as predict
   decodes them), both run by ``engines.OnnxEngine`` (what predict runs) on the same uint8 batch,
   with the same threads, interleaved: every round runs fp32 then int8 (then int8 then fp32), so a
   shared machine's load falls on both alike. Figure: the median of the rounds' ratios. Bar >= 1.8x.
2. Whole command. ``uiaa predict FOLDER -m fp32.onnx`` against ``-m int8.onnx`` on the same JPEGs
   (same batch, workers and threads), alternating; wall time of the whole command (start-up included)
   and the steady rate (after the first batch). Bar: whole command >= 1.5x.
3. Ranking. The demo's model (``examples/demo.py``, resnet18 at 64 px trained on the example data;
   ``--demo DIR`` reuses a finished demo folder, else it is run in a temporary one) converted with
   ``uiaa convert best.pt m-int8.onnx --int8 --calibrate train.h5`` (training images only); both
   models score the 150 held-out images through ``uiaa predict``. Bars: SRCC between the int8 and
   fp32 scores >= 0.99; the int8 scores' SRCC against the mean votes within 0.005 of fp32's.

Prints a table with PASS/FAIL; exit status 1 if a bar is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, machine

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_predict import make_jpegs, make_model  # noqa: E402
from bench_predict import uiaa as predict_command
from bench_predict import whole_command as timed_command


def uiaa(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "uiaa_cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"uiaa {args[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result


def predict_rate(photos: Path, model: Path, batch: int, threads: int, workers: int) -> tuple[float, float, int]:
    """``uiaa predict PHOTOS -m MODEL`` on the CPU with ``threads`` threads: steady images/s (after the
    first batch), wall seconds, lines (bench_predict's timing of the whole command)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the command's (it inherits this environment)
    command = predict_command(photos, "-m", model, "--batch-size", batch, "--workers", workers, "--device", "cpu")
    wall, steady, lines = timed_command(command, batch)
    return steady, wall, lines


def models(tmp: Path, photos: Path, arch: str, size: int) -> tuple[Path, Path, str]:
    """The fp32 export of a random-weight checkpoint and its int8 model (through uiaa convert)."""
    checkpoint, fp32, int8 = tmp / "model.pt", tmp / "fp32.onnx", tmp / "int8.onnx"
    make_model(checkpoint, arch, size)
    uiaa("convert", checkpoint, fp32)
    report = uiaa("convert", fp32, int8, "--int8", "--calibrate", photos).stderr.strip().splitlines()[-1]
    return fp32, int8, report


def model_alone(fp32: Path, int8: Path, photos: Path, batch: int, threads: int, rounds: int) -> dict:
    from uiaa_cli.models.engines import OnnxEngine
    from uiaa_cli.pixels.images import decode_image, list_images

    engines = {"fp32": OnnxEngine(fp32, "cpu", threads), "int8": OnnxEngine(int8, "cpu", threads)}
    size = int(engines["fp32"].config["size"])
    files = list_images(photos)
    pixels = np.stack([decode_image(files[i % len(files)], size) for i in range(batch)])
    for engine in engines.values():
        engine(pixels)  # warm-up: ONNX Runtime prepacks weights on the first run
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(rounds):
        for name in (("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")):
            start = time.perf_counter()
            engines[name](pixels)
            times[name].append(time.perf_counter() - start)
    ratios = [f / i for f, i in zip(times["fp32"], times["int8"])]
    return {"fp32": batch / statistics.median(times["fp32"]), "int8": batch / statistics.median(times["int8"]),
            "ratio": statistics.median(ratios)}


def whole_command(fp32: Path, int8: Path, photos: Path, batch: int, threads: int, workers: int,
                  rounds: int) -> dict:
    out: dict[str, list[tuple[float, float]]] = {"fp32": [], "int8": []}
    for r in range(rounds):
        for name, model in ((("fp32", fp32), ("int8", int8)) if r % 2 == 0 else (("int8", int8), ("fp32", fp32))):
            start = time.perf_counter()
            rate, _startup, _lines = predict_rate(photos, model, batch, threads, workers)
            out[name].append((time.perf_counter() - start, rate))
    wall = {k: statistics.median(t for t, _ in v) for k, v in out.items()}
    rate = {k: statistics.median(r for _, r in v) for k, v in out.items()}
    return {"wall": wall, "rate": rate, "ratio": wall["fp32"] / wall["int8"],
            "rate_ratio": rate["int8"] / rate["fp32"]}


def ranking(demo: Path, tmp: Path) -> dict:
    from scipy.stats import spearmanr

    from uiaa_cli.tables.table import read_table

    checkpoint = demo / "run" / "best.pt"
    uiaa("convert", checkpoint, tmp / "demo.onnx")
    report = uiaa("convert", checkpoint, tmp / "demo-int8.onnx", "--int8", "--calibrate", demo / "train.h5")
    scores = {}
    for name in ("demo", "demo-int8"):
        uiaa("predict", demo / "test.csv", "--images", demo / "examples" / "images", "-m", tmp / f"{name}.onnx",
             "-o", tmp / f"{name}.csv")
        table = read_table(tmp / f"{name}.csv")
        scores[name] = dict(zip(table["image"].tolist(), table["score"].tolist()))
    test = read_table(demo / "test.csv")
    names = [n for n in test["image"].astype(str).tolist() if n in scores["demo"]]
    votes = dict(zip(test["image"].astype(str).tolist(), test["mean"].tolist()))
    fp32 = np.array([scores["demo"][n] for n in names])
    int8 = np.array([scores["demo-int8"][n] for n in names])
    mean = np.array([votes[n] for n in names])
    return {"images": len(names), "srcc": spearmanr(fp32, int8).statistic, "max": np.abs(fp32 - int8).max(),
            "votes_fp32": spearmanr(fp32, mean).statistic, "votes_int8": spearmanr(int8, mean).statistic,
            "convert": report.stderr.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and images (a rough figure)")
    parser.add_argument("--threads", type=int, default=2, help="the model's threads, both precisions (default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="predict's decoding processes")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("-n", type=int, default=None, help="JPEGs for the whole-command run (default 96, quick 48)")
    parser.add_argument("--rounds", type=int, default=None, help="model-alone rounds (default 12, quick 4)")
    parser.add_argument("--demo", type=Path, default=None, help="a finished examples/demo.py folder to reuse")
    parser.add_argument("--skip", choices=("speed", "ranking"), default=None, help="leave one part out")
    args = parser.parse_args()
    n = args.n or (48 if args.quick else 96)
    rounds = args.rounds or (4 if args.quick else 12)
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="uiaa-bench-int8-") as tmp:
        tmp = Path(tmp)
        if args.skip != "speed":
            photos = tmp / "photos"
            make_jpegs(photos, n)
            fp32, int8, report = models(tmp, photos, args.arch, args.size)
            print(f"bench_int8: {args.arch} at {args.size} px, batch {args.batch_size}, {args.threads} threads; "
                  f"{report}", file=sys.stderr)
            alone = model_alone(fp32, int8, photos, args.batch_size, args.threads, rounds)
            rows += [
                ("model alone, fp32 ONNX", f"{alone['fp32']:.2f} images/s", "", ""),
                ("model alone, int8 ONNX", f"{alone['int8']:.2f} images/s", "", ""),
                ("model alone, int8 / fp32", f"{alone['ratio']:.2f}x", ">= 1.8x",
                 "PASS" if alone["ratio"] >= 1.8 else "FAIL"),
            ]
            command = whole_command(fp32, int8, photos, args.batch_size, args.threads, args.workers,
                                    1 if args.quick else 2)
            rows += [
                (f"uiaa predict, {n} JPEGs 640x480, fp32", f"{command['wall']['fp32']:.1f} s",
                 f"(steady {command['rate']['fp32']:.2f} images/s)", ""),
                (f"uiaa predict, {n} JPEGs 640x480, int8", f"{command['wall']['int8']:.1f} s",
                 f"(steady {command['rate']['int8']:.2f} images/s)", ""),
                ("whole command, int8 / fp32", f"{command['ratio']:.2f}x", ">= 1.5x",
                 "PASS" if command["ratio"] >= 1.5 else "FAIL"),
                ("steady rate, int8 / fp32", f"{command['rate_ratio']:.2f}x", "", ""),
            ]
        if args.skip != "ranking":
            demo = args.demo
            if demo is None:
                demo = tmp / "demo"
                print("bench_int8: running examples/demo.py for the model to quantize", file=sys.stderr)
                subprocess.run([sys.executable, REPO / "examples" / "demo.py", "--out", demo], check=True,
                               stdout=subprocess.DEVNULL)
            rank = ranking(demo, tmp)
            print(f"bench_int8: demo model: {rank['convert']}", file=sys.stderr)
            gap = rank["votes_int8"] - rank["votes_fp32"]
            rows += [
                (f"SRCC int8 vs fp32 scores, {rank['images']} held-out", f"{rank['srcc']:.4f}", ">= 0.99",
                 "PASS" if rank["srcc"] >= 0.99 else "FAIL"),
                ("max |int8 - fp32| score", f"{rank['max']:.4f}", "", ""),
                ("SRCC against the votes, fp32 / int8", f"{rank['votes_fp32']:.4f} / {rank['votes_int8']:.4f}", "", ""),
                ("SRCC against the votes, int8 - fp32", f"{gap:+.4f}", "within 0.005",
                 "PASS" if abs(gap) <= 0.005 else "FAIL"),
            ]

    print(f"\nbench_int8 on {machine()}\n")
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{'measure':<{width[0]}}  {'value':<{width[1]}}  {'bar':<{width[2]}}  result")
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}".rstrip())
    if any(r[3] == "FAIL" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
