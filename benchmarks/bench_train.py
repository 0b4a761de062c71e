"""``uiaa train`` from a cache against the same model stepping on tensors already in memory.

Bar (SPEC §4): training from a cache on CPU (resnet18, 128 px, batch 32, 2 threads) reaches at least
90% of the images/s of the same model, optimiser and loss stepping on random normalised tensors
that never leave memory; that is, data loading (HDF5 reads in a background thread, uint8 batches,
flip and normalisation) is never the bottleneck.

The cache is built by the real ``uiaa cache`` from generated JPEGs labelled by ``uiaa labels``.
The cache side is the real training loop (``Trainer.train_epoch``: reads, flips, normalises,
steps, all-reduce-free loss bookkeeping); both sides share one model and optimiser, run
alternately (so a busy shared machine disturbs both alike), and the best round of each counts.

    .venv/bin/python benchmarks/bench_train.py                # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --quick        # smoke run (~1 min)
    .venv/bin/python benchmarks/bench_train.py --device cuda  # on a GPU: both sides bf16 autocast, channels_last

On CUDA the in-memory side runs as training does there: the batch on the GPU in channels_last, the
forward pass and loss under bf16 autocast (``Trainer.autocast``), and a synchronisation per round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import report, run_uiaa


def make_cache(folder: Path, n: int, size: int) -> Path:
    """``n`` generated 160x120 JPEGs -> ``uiaa labels`` -> ``uiaa cache --size size``."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    for i in range(n):
        pixels = np.clip(rng.normal(128, 60, (120, 160, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i:04d}.jpg", quality=90)
    counts = rng.integers(0, 20, (n, 10))
    counts[:, 4] += 1
    lines = ["image," + ",".join(str(b) for b in range(1, 11))]
    lines += [f"img/{i:04d}.jpg," + ",".join(map(str, c)) for i, c in enumerate(counts)]
    (folder / "counts.csv").write_text("\n".join(lines) + "\n")
    run_uiaa("labels", folder / "counts.csv", "-o", folder / "labels.csv")
    run_uiaa("cache", folder / "labels.csv", "-o", folder / "cache.h5", "--size", str(size), "--quiet")
    return folder / "cache.h5"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (a smoke run)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (2, 3) if args.quick else (4, 5)
    n = steps * args.batch_size

    from uiaa_cli.training.checkpoints import Position
    from uiaa_cli.training.report import Reporter
    from uiaa_cli.training.runtime import Dist, StopFlag
    from uiaa_cli.training.settings import TrainSettings
    from uiaa_cli.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp), n, args.size)
        settings = TrainSettings(data=str(cache), arch="resnet18", weights="none", epochs=1, lr=(1e-3, 1e-3),
                                 batch_size=args.batch_size, val_frac=0.0, device=args.device,
                                 out=str(Path(tmp) / "run"),
                                 quiet=True)
        trainer = Trainer(settings, Dist())
        model, optimizer, loss_fn = trainer.net, trainer.optimizer, trainer.loss_fn
        quiet, stop = Reporter(False, False), StopFlag()

        device = trainer.device
        layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device).contiguous(memory_format=layout)
        y = torch.softmax(torch.randn(args.batch_size, 10, device=device), 1)

        def in_memory() -> float:
            model.train()
            start = time.perf_counter()
            for _ in range(steps):
                with trainer.autocast():  # bf16 on CUDA, as training; a no-op on CPU
                    # step_net: the network the loop steps full batches through (compiled on CUDA)
                    loss = loss_fn(trainer.step_net(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()  # waits for the GPU, as the training loop's bookkeeping does
            return steps * args.batch_size / (time.perf_counter() - start)

        def from_cache() -> float:
            trainer.position = Position()
            trainer.train_epoch(0, stop, quiet)
            return trainer.position.seen / trainer.position.seconds

        in_memory(), from_cache()  # warm-up: oneDNN primitives, the page cache
        memory, cached = [], []
        for _ in range(rounds):
            memory.append(in_memory())
            cached.append(from_cache())
            print(f"round: in memory {memory[-1]:.1f} img/s, from cache {cached[-1]:.1f} img/s", file=sys.stderr)
        trainer.close()

    best_memory, best_cache = max(memory), max(cached)
    ratio = best_cache / best_memory
    rows = [
        ("in memory (random tensors), images/s", f"{best_memory:.1f}", "", True),
        ("from a cache (uiaa train loop), images/s", f"{best_cache:.1f}", "", True),
        ("cache / in memory", f"{ratio:.1%}", ">= 90%", ratio >= 0.9),
    ]
    ok = report(f"uiaa train, resnet18 {args.size} px, batch {args.batch_size}, {args.threads} threads, {args.device}, "
                f"{steps} steps per round, best of {rounds}", rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
