"""``uiaa predict``: the ONNX engine against torch eager, whole command; start-up of one photo; memory.

    python benchmarks/bench_predict.py                 # ~10 min on a shared 2-core VM
    python benchmarks/bench_predict.py --quick         # a rough figure (~3 min)
    python benchmarks/bench_predict.py --device cuda   # torch on a GPU (bf16 autocast, channels_last)
    python benchmarks/bench_predict.py --sweep         # ONNX Runtime: batch sizes and session options
    python benchmarks/bench_predict.py --layouts       # torch on CPU: NCHW against channels_last

1. Engines, whole command. ``uiaa predict photos/`` (ResNet-50 at 224 px, untrained weights, 160
   JPEGs of 640x480, ``--workers 2``) timed from launch to exit with ``--engine onnx`` and with
   ``--engine torch``, in alternate rounds (a busy shared machine disturbs both alike); the best
   round of each counts. The checkpoint's graph is exported before the rounds (the export, once per
   checkpoint, is reported apart). Bar: ONNX >= 1.6x torch.
   Each engine's steady rate (its stdout lines after the first batch, as they stream) is also set
   against the same engine's forward pass on uint8 batches already in memory (``engines.open_engine``,
   normalisation included). Bar (SPEC §4): >= 80%.
2. Start-up. ``uiaa predict one.jpg`` with the graph exported: wall time to its line and to exit,
   and the peak RSS of the process and its children (summed, sampled every 5 ms; and the main
   process's own peak from the kernel). Bar: < 1 s and < 300 MB.
3. Memory. Peak RSS of ``uiaa predict -o preds.parquet`` on N and on 10N images (resnet18 at 64 px:
   the figure is about streaming, not the network). Bar: within 15%.

``--device cuda``: the torch engine runs on the GPU (bf16 autocast, channels_last) and is set
against its own forward pass; the ONNX-on-CPU ratio is not measured then.
Prints a table with PASS/FAIL; exit status 1 if a bar is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import REPO, TreeMemory, report

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

    from uiaa_cli.models import networks as models

    torch.manual_seed(0)
    model = models.build_model(arch, 10, "none")
    config = models.make_config(arch=arch, size=size, bins=list(range(1, 11)), kind="gauss-mv",
                                targets=[f"p_{i}" for i in range(1, 11)], loss="ce")
    models.save_checkpoint(path, model, config)


def uiaa(*args: object) -> list[str]:
    return [sys.executable, "-m", "uiaa_cli", "predict", *map(str, args)]


def whole_command(command: list[str], batch: int) -> tuple[float, float, int]:
    """Wall seconds from launch to exit, steady images/s (lines after the first batch), lines."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    count, first, last = 0, 0.0, 0.0
    for _line in proc.stdout:  # predict flushes once per batch: a batch's lines arrive together
        count += 1
        last = time.perf_counter()
        if count == batch:
            first = last
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(command[3:])} failed with exit status {proc.returncode}")
    wall = time.perf_counter() - start
    steady = (count - batch) / (last - first) if count > batch and last > first else float("nan")
    return wall, steady, count


def forward_rate(model: Path, engine: str, device: str, batch: int, batches: int) -> float:
    """Images/s of the engine itself on uint8 batches already in memory (after one warm-up batch)."""
    from uiaa_cli.models.engines import open_engine

    scorer = open_engine(str(model), engine, device, note=lambda m: None)
    size = int(scorer.config["size"])
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    scorer(x)
    start = time.perf_counter()
    for _ in range(batches):
        scorer(x)
    return batch * batches / (time.perf_counter() - start)


def in_subprocess_forward(model: Path, engine: str, device: str, batch: int, batches: int) -> float:
    """``forward_rate`` in a fresh process, so torch's and ONNX Runtime's thread pools never meet."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import bench_predict as b; "
            "print(b.forward_rate(b.Path(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(Path(__file__).parent), str(model), engine,
                          device, str(batch), str(batches)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_rss(command: list[str]) -> tuple[float, float, float, float]:
    """Seconds to the first stdout byte and to exit, peak summed RSS of the process tree (MiB, sampled
    every 5 ms), and the main process's own peak RSS (MiB, the kernel's VmHWM)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    with TreeMemory(proc.pid) as memory:
        proc.stdout.read(1)
        first = time.perf_counter() - start
        proc.stdout.read()
        status = proc.wait()
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command[3:])} failed with exit status {status}")
    return first, wall, memory.peak / 2**20, memory.own / 2**20


def sweep(model: Path, size: int, threads: int) -> None:
    """ONNX Runtime's images/s by batch size and session options (forward only, in memory)."""
    import onnxruntime as ort

    from uiaa_cli.models.graphs import exported_graph

    graph = exported_graph(model, note=lambda m: None)
    x = np.random.default_rng(0).integers(0, 256, (64, 3, size, size), dtype=np.uint8)
    level = ort.GraphOptimizationLevel
    choices = {
        "default (ALL, spinning)": {},
        "optimisation EXTENDED": {"level": level.ORT_ENABLE_EXTENDED},
        "optimisation BASIC": {"level": level.ORT_ENABLE_BASIC},
        "no spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
        "1 thread": {"threads": 1},
    }
    print(f"\nONNX Runtime {ort.__version__}, forward only, images/s (session creation in seconds)", file=sys.stderr)
    for name, choice in choices.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = choice.get("threads", threads)
        options.graph_optimization_level = choice.get("level", level.ORT_ENABLE_ALL)
        for key, value in choice.get("config", {}).items():
            options.add_session_config_entry(key, value)
        start = time.perf_counter()
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        created = time.perf_counter() - start
        rates = []
        for batch in (1, 8, 32, 64):
            session.run(["probs"], {"pixels": x[:batch]})
            reps = max(1, 64 // batch)
            start = time.perf_counter()
            for _ in range(reps):
                session.run(["probs"], {"pixels": x[:batch]})
            rates.append(f"b{batch} {batch * reps / (time.perf_counter() - start):5.1f}")
        print(f"  {name:<26} {'  '.join(rates)}  ({created:.2f} s)", file=sys.stderr)


def layouts(model: Path, batch: int, rounds: int = 3) -> None:
    """torch on CPU: the Scorer's images/s with NCHW and with channels_last inputs, alternately."""
    import torch

    from uiaa_cli.models.networks import load_scorer

    scorer, config = load_scorer(model)
    size = int(config["size"])
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    choices = {"NCHW": (torch.contiguous_format, scorer),
               "channels_last": (torch.channels_last, load_scorer(model)[0].to(memory_format=torch.channels_last))}
    best = dict.fromkeys(choices, 0.0)
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (layout, module) in choices.items():
                inputs = x.contiguous(memory_format=layout)
                module(inputs)
                start = time.perf_counter()
                module(inputs)
                module(inputs)
                best[name] = max(best[name], 2 * batch / (time.perf_counter() - start))
    print("torch on CPU, forward only, best of "
          f"{rounds}: " + ", ".join(f"{k} {v:.2f} images/s" for k, v in best.items()), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and one round (a rough figure)")
    parser.add_argument("--device", default="cpu", help="cpu (ONNX against torch) or cuda (torch on the GPU)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="predict's decoding processes")
    parser.add_argument("-n", type=int, default=None, help="photos for the engine runs (default 160, quick 64)")
    parser.add_argument("--rounds", type=int, default=None, help="alternate rounds (default 2, quick 1)")
    parser.add_argument("--mem-n", type=int, default=None, help="N of the memory run (default 100, quick 40)")
    parser.add_argument("--sweep", action="store_true", help="also ONNX Runtime's batch sizes and options")
    parser.add_argument("--layouts", action="store_true", help="only torch's CPU layouts (NCHW, channels_last)")
    args = parser.parse_args()
    n = args.n or (64 if args.quick else 160)
    rounds = args.rounds or (1 if args.quick else 2)
    mem_n = args.mem_n or (40 if args.quick else 100)
    batch, cuda = args.batch_size, args.device.startswith("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    if args.layouts:
        with tempfile.TemporaryDirectory(prefix="uiaa-bench-predict-") as tmp:
            make_model(Path(tmp) / "model.pt", args.arch, args.size)
            layouts(Path(tmp) / "model.pt", 8 if args.quick else args.batch_size)
        return 0
    rows: list[tuple[str, str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="uiaa-bench-predict-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.pt"
        make_model(model, args.arch, args.size)
        make_jpegs(tmp / "all", max(n, 10 * mem_n))
        folders = {}
        for name, count in (("photos", n), ("small", mem_n), ("ten", 10 * mem_n)):
            folders[name] = tmp / name
            folders[name].mkdir()
            for f in sorted((tmp / "all").iterdir())[:count]:
                os.link(f, folders[name] / f.name)
        print(f"bench_predict: {args.arch} at {args.size} px, batch {batch}, {args.workers} workers, "
              f"{cores} cores; {n} JPEGs of 640x480", file=sys.stderr)

        start = time.perf_counter()
        subprocess.run(uiaa(folders["photos"] / "photo00000.jpg", "-m", model, "--engine", "onnx"), check=True,
                       capture_output=True)
        export_s = time.perf_counter() - start
        rows.append(("export to ONNX + first predict (once per checkpoint)", f"{export_s:.1f} s", "", True))

        engines = [("torch", args.device)] if cuda else [("onnx", "cpu"), ("torch", "cpu")]
        walls: dict[str, list[float]] = {e: [] for e, _ in engines}
        steady: dict[str, list[float]] = {e: [] for e, _ in engines}
        forward: dict[str, list[float]] = {e: [] for e, _ in engines}
        for r in range(rounds):
            for engine, device in engines:
                wall, rate, lines = whole_command(uiaa(folders["photos"], "-m", model, "--engine", engine, "--device",
                                                       device, "--batch-size", batch, "--workers", args.workers), batch)
                if lines != n:
                    raise SystemExit(f"predict --engine {engine} scored {lines} of {n} images")
                walls[engine].append(wall)
                steady[engine].append(rate)
                forward[engine].append(in_subprocess_forward(model, engine, device, batch, max(2, n // batch - 1)))
                print(f"round {r + 1}: {engine}: whole command {wall:.1f} s ({n / wall:.2f} images/s), steady "
                      f"{rate:.2f} images/s, forward only {forward[engine][-1]:.2f} images/s", file=sys.stderr)
        for engine, device in engines:
            best = min(walls[engine])
            rows.append((f"{engine} ({device}): whole command, {n} photos", f"{best:.1f} s = {n / best:.2f} img/s",
                         "", True))
            ratio = max(steady[engine]) / max(forward[engine])
            rows.append((f"{engine}: predict's steady rate / forward only", f"{ratio:.0%}", ">= 80%", ratio >= 0.8))
        if not cuda:
            speedup = min(walls["torch"]) / min(walls["onnx"])
            rows.append(("ONNX engine / torch eager, whole command", f"{speedup:.2f}x", ">= 1.6x", speedup >= 1.6))

        one = folders["photos"] / "photo00001.jpg"
        for engine in ("onnx",) if not cuda else ():
            runs = [peak_rss(uiaa(one, "-m", model, "--engine", engine)) for _ in range(3)]
            first, wall, tree, own = (min(r[i] for r in runs) for i in range(4))
            rows.append((f"predict one.jpg ({engine}): to its line / exit", f"{first:.2f} s / {wall:.2f} s", "< 1 s",
                         wall < 1.0))
            rows.append((f"predict one.jpg ({engine}): peak RSS, all / main", f"{tree:.0f} / {own:.0f} MiB", "< 300 MB",
                         tree * 2**20 < 300e6))
        torch_one = peak_rss(uiaa(one, "-m", model, "--engine", "torch", "--device", args.device))
        rows.append(("predict one.jpg (torch): to exit, peak RSS", f"{torch_one[1]:.2f} s, {torch_one[2]:.0f} MiB", "",
                     True))

        mem = {}
        small_model = tmp / "small.pt"  # memory is about streaming, not the network: a small one runs 10N fast
        make_model(small_model, "resnet18", 64)
        # The runs measure predicting, not what a first run does once per checkpoint and machine (the
        # export, and ONNX Runtime's optimised graph kept in the user cache: ~80 MB more that once).
        subprocess.run(uiaa(one, "-m", small_model, "--device", args.device), check=True, capture_output=True)
        for label in ("small", "ten"):
            mem[label] = peak_rss(uiaa(folders[label], "-m", small_model, "--batch-size", batch, "--workers",
                                       args.workers, "--device", args.device, "-o", tmp / f"preds-{label}.parquet"))[2]
        growth = mem["ten"] / mem["small"]
        rows.append((f"peak RSS, {mem_n} -> {10 * mem_n} images to Parquet (resnet18)",
                     f"{mem['small']:.0f} -> {mem['ten']:.0f} MiB", "<= 1.15x", growth <= 1.15))
        if args.sweep:
            sweep(model, args.size, cores)

    ok = report(f"uiaa predict, {args.arch} at {args.size} px, batch {batch}, {args.workers} workers, "
                f"device {args.device}", rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
