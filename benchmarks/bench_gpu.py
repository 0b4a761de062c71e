"""The GPU check: where the time of the AVA experiment goes on one CUDA device, in one run.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py          # on a CUDA machine: about 5 minutes on one H200
    python3 benchmarks/bench_gpu.py --smoke               # every row on CPU, tiny sizes, in seconds (the suite)
    python3 benchmarks/bench_gpu.py --rows a,b,e --no-compile

It needs torch, torchvision, numpy, h5py, pandas, pyarrow and Pillow, and no install: the library is
called in this process (never the ``uiaa`` command, so typer and rich may be absent). It makes its own
photos, labels and caches in a temporary folder and prints one table, a row as soon as it is measured,
so a run stopped by a timeout still leaves the rows it finished; a row that fails says why in its place
and the others still run. ``--budget`` seconds (default 330) bound the whole: a row that would start
after it is skipped.

    (a) ResNet-50 forward + backward + optimiser step, images/s, on batches already on the GPU, at 224
        and 384 px, bf16 autocast, channels_last, cuDNN's benchmarked kernels (as train sets), eager,
        and torch.compile'd at 384 px (what train runs): the limit.
    (b) training from a jpeg cache at 384 px through the trainer (``Trainer``: what ``uiaa train``
        runs), images/s of its last epoch (the first includes compilation), the whole run's wall
        time, and the ratio to (a) at 384 px.
    (c) the data loader alone over that cache: CPU worker processes (Pillow, the trainer's loader)
        against ``--decode gpu`` (torchvision's ``decode_jpeg`` on the device, a batch of the cache's
        JPEG files per call). On CUDA, (b) runs again with ``--decode gpu`` last, if time is left.
    (d) predict, torch engine, bf16, 224 px: the whole of ``uiaa predict`` on a folder of 640x480
        JPEGs (``run_predict``) against the engine's forward pass on uint8 batches in memory.
    (e) the projected wall time of examples/ava.py's training and test pass on AVA: 5 epochs at
        384 px of 212,015 images (235,572 less the 10 % train holds out, which it validates each
        epoch) and one pass over the 19,930 test images, from the rows above.

Bars (issue 22): (b) >= 85 % of (a) at 384 px; (e) under 15 minutes. Exit status 0 when every row
ran (the bars are printed, not enforced: ``--smoke`` figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's uiaa_cli, installed or not

AVA_IMAGES, AVA_TEST = 255_502, 19_930
AVA_TRAIN = AVA_IMAGES - AVA_TEST
AVA_VAL = round(AVA_TRAIN * 0.1)  # train's --val-frac 0.1
AVA_EPOCHS = 5


@dataclass
class Plan:
    """The sizes of one run: the GPU check, or the CPU smoke run."""

    device: str
    arch: str = "resnet50"
    sizes: tuple[int, int] = (224, 384)
    batch: int = 32
    warm: int = 5        # steps before timing (after the first, which compiles)
    steps: int = 30      # timed steps of (a)
    cache_n: int = 8192  # images of the (b)/(c) cache: an epoch of seconds, not the loader's start
    epochs: int = 2      # of (b): the last one is timed
    photos: int = 1024   # of (d)
    photo_wh: tuple[int, int] = (640, 480)
    fwd_batches: int = 20
    compile: str = "auto"  # train's --compile in (b): auto is on for CUDA


def smoke_plan() -> Plan:
    return Plan(device="cpu", arch="resnet18", sizes=(32, 40), batch=2, warm=1, steps=2, cache_n=12, epochs=2,
                photos=4, photo_wh=(64, 48), fwd_batches=2)


class Table:
    """One table, printed a row at a time (flushed: a killed run keeps what it printed)."""

    def __init__(self) -> None:
        self.rows: dict[str, float] = {}  # key -> figure, for the rows that use earlier ones
        print(f"{'row':<4}{'what':<72}{'measured':>16}  note", flush=True)

    def add(self, row: str, what: str, measured: str, note: str = "") -> None:
        print(f"{row:<4}{what:<72}{measured:>16}  {note}", flush=True)

    def guarded(self, row: str, what: str, fn: Callable[[], None], deadline: float) -> bool:
        """Run one row; a failure (or the spent budget) is printed in its place."""
        if time.perf_counter() > deadline:
            self.add(row, what, "skipped", "the --budget was spent")
            return False
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - any failure of a row is reported in its row
            last = traceback.extract_tb(e.__traceback__)[-1]
            self.add(row, what, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''} "
                                          f"({Path(last.filename).name}:{last.lineno})")
            return False


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))  # --device cuda:N is not the current device


def module_found(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def rate(n: int) -> str:
    return f"{n:,.1f}/s" if n < 100 else f"{n:,.0f}/s"


# ------------------------------------------------------------------------------------------- data


def make_photos(folder: Path, n: int, wh: tuple[int, int], unique: int = 64) -> list[str]:
    """``n`` photo-like JPEGs (smooth shapes and grain, ~50 KB at 640x480): ``unique`` drawn, the rest
    hard links to them under their own names (decoding costs the same; drawing them does not)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = wh
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    names = []
    for i in range(n):
        name = f"p{i:05d}.jpg"
        names.append(name)
        if i < unique:
            wave = (np.sin(x * rng.uniform(0.005, 0.03) + i) * np.cos(y * rng.uniform(0.005, 0.03) - i))[..., None]
            pixels = rng.uniform(0, 255, 3) + wave * rng.uniform(30, 90, 3) + rng.normal(0, 12, (h, w, 1))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, quality=88)
        else:
            os.link(folder / f"p{i % unique:05d}.jpg", folder / name)
    return names


def make_cache(folder: Path, plan: Plan, size: int) -> Path:
    """Photos -> a gauss-mv labels table (random AVA-like votes) -> a jpeg cache at ``size``."""
    from uiaa_cli.pixels.cache_build import build_cache
    from uiaa_cli.tables.writers import write_table
    from uiaa_cli.targets.labels import LabelSettings, build_labels

    names = make_photos(folder / "photos", plan.cache_n, (512, 384))
    counts = np.random.default_rng(1).multinomial(200, np.full(10, 0.1), size=len(names)).astype(np.int64)
    table, _ = build_labels(np.array(names), counts, np.arange(1, 11, dtype=np.float64), LabelSettings())
    write_table(table, folder / "labels.csv")
    cache = folder / f"cache-{size}.h5"
    build_cache(folder / "labels.csv", folder / "photos", cache, size=size, progress=False)
    return cache


# ------------------------------------------------------------------------------------------ rows


def compile_model(model: object, device: str) -> object:
    """The model as train compiles it, compiled afresh: Dynamo's cache is per code object, and a
    second size compiled on the same ResNet.forward would get dynamic shapes, which train never runs."""
    import torch

    from uiaa_cli.training import runtime

    torch._dynamo.reset()
    return runtime.compiled(model, torch.device(device))


def make_optimizer(params: object, device: str) -> object:
    """The optimiser train builds (fused on CUDA once train's helper does so)."""
    import torch

    from uiaa_cli.training import runtime

    helper = getattr(runtime, "make_optimizer", None)
    if helper:
        return helper(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, device=torch.device(device))
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)


def step_rate(plan: Plan, size: int, compiled: bool) -> tuple[float, float]:
    """(a): images/s of forward + backward + step on a batch already on the device; and the seconds
    the first step took (compilation, cuDNN's choice of kernels)."""
    import torch

    from uiaa_cli.losses import loss_function
    from uiaa_cli.models.networks import build_model
    from uiaa_cli.training.runtime import autocast_for

    device = torch.device(plan.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the trainer sets it: the limit runs the same kernels
    torch.manual_seed(0)
    model = build_model(plan.arch, 10, "none").to(device)
    layout = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = make_optimizer(model.parameters(), plan.device)
    net = compile_model(model, plan.device) if compiled else model
    loss_fn, autocast = loss_function("ce"), autocast_for(device)
    x = torch.randn(plan.batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.softmax(torch.randn(plan.batch, 10, device=device), 1)

    def step() -> None:
        with autocast():
            out = net(x)
        loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    start = time.perf_counter()
    step()
    synchronize(plan.device)
    first = time.perf_counter() - start
    for _ in range(plan.warm):
        step()
    synchronize(plan.device)
    start = time.perf_counter()
    for _ in range(plan.steps):
        step()
    synchronize(plan.device)
    return plan.steps * plan.batch / (time.perf_counter() - start), first


class Timings:
    """A Reporter for the trainer that keeps when each epoch started and ended (validation and the
    checkpoints included), and is silent."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def start_epoch(self, *args: object) -> None:
        self.starts.append(time.perf_counter())

    def step(self, *args: object) -> None:
        pass

    def line(self, text: str) -> None:
        if "epoch" in text:  # the line after each epoch's validation and checkpoints
            self.ends.append(time.perf_counter())

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None  # whatever else a Reporter is told


def train_from_cache(plan: Plan, cache: Path, out: Path, **options: str) -> dict[str, float]:
    """(b): the trainer on the cache; the last epoch's images/s, the run's wall time and its parts."""
    from uiaa_cli.training.runtime import Dist
    from uiaa_cli.training.settings import TrainSettings
    from uiaa_cli.training.trainer import Trainer

    fields = TrainSettings.__dataclass_fields__
    settings = TrainSettings(data=str(cache), arch=plan.arch, weights="none", epochs=plan.epochs, lr=(1e-3, 1e-4),
                             batch_size=plan.batch, val_frac=0.05, device=plan.device, out=str(out), quiet=True,
                             progress=False, **{k: v for k, v in options.items() if k in fields})
    timings = Timings()
    if plan.device.startswith("cuda"):
        import torch

        torch._dynamo.reset()  # train compiles in a process of its own: no graph of another row's
    start = time.perf_counter()
    trainer = Trainer(settings, Dist())
    try:
        set_up = time.perf_counter() - start
        trainer.run(timings)  # type: ignore[arg-type]
        history, n_val = trainer.history, len(trainer.data.val_rows)
    finally:
        trainer.close()
    wall = time.perf_counter() - start
    last = history[-1]
    return {"rate": float(last["images_per_s"]), "wall": wall, "set_up": set_up,
            "first_epoch": float(history[0]["seconds"]), "seen": float(last["seconds"]) * float(last["images_per_s"]),
            "after_epoch": timings.ends[-1] - timings.starts[-1] - float(last["seconds"]), "val": n_val}


def loader_rate(plan: Plan, cache: Path, workers: int) -> float:
    """(c), CPU: the trainer's loader (worker processes decoding with Pillow), batches moved to the device."""
    import torch

    from uiaa_cli.training.data import CacheSource, epoch_batches

    device = torch.device(plan.device)
    source = CacheSource(str(cache), pin_memory=device.type == "cuda", workers=workers)
    try:
        batches = epoch_batches(len(source.table), plan.batch, 0, 0)
        for pixels, _ in source.batches(batches[:2]):  # start the processes
            pixels.to(device, non_blocking=True)
        synchronize(plan.device)
        start, n = time.perf_counter(), 0
        for pixels, _rows in source.batches(batches):
            pixels.to(device, non_blocking=True)
            n += len(pixels)
        synchronize(plan.device)
        return n / (time.perf_counter() - start)
    finally:
        source.close()


def device_decode_rate(plan: Plan, cache: Path) -> float:
    """(c), device: train's ``--decode gpu`` loader: a thread reads each batch's JPEG files from the
    cache and torchvision's ``decode_jpeg`` decodes them on the device in one call (nvJPEG on CUDA;
    libjpeg-turbo on the CPU under --smoke)."""
    import torch

    from uiaa_cli.training.data import CacheSource, epoch_batches

    source = CacheSource(str(cache), decode_on=torch.device(plan.device))
    try:
        batches = epoch_batches(len(source.table), plan.batch, 0, 0)
        for _ in source.batches(batches[:2]):
            pass
        synchronize(plan.device)
        start, n = time.perf_counter(), 0
        for pixels, _rows in source.batches(batches):
            n += len(pixels)
        synchronize(plan.device)
        return n / (time.perf_counter() - start)
    finally:
        source.close()


def make_checkpoint(path: Path, plan: Plan, size: int) -> None:
    import torch

    from uiaa_cli.models.networks import build_model, make_config, save_checkpoint

    torch.manual_seed(0)
    model = build_model(plan.arch, 10, "none")
    config = make_config(arch=plan.arch, size=size, bins=list(range(1, 11)), kind="gauss-mv",
                         targets=[f"p_{i}" for i in range(1, 11)], loss="ce")
    save_checkpoint(path, model, config)


def predict_whole(plan: Plan, photos: Path, checkpoint: Path, out: Path) -> float:
    """(d): ``uiaa predict PHOTOS -m CKPT -o preds.csv --engine torch`` in this process, images/s from
    the call to its return (start-up of the decoding processes and the model included)."""
    from uiaa_cli.predict.pipeline import run_predict

    start = time.perf_counter()
    result = run_predict([str(photos)], model=str(checkpoint), output=str(out), fmt=None, images=None,
                         device=plan.device, batch_size=plan.batch, workers=None, progress=False, engine="torch",
                         note=lambda line: None)
    return result.scored / (time.perf_counter() - start)


def forward_rate(plan: Plan, checkpoint: Path, size: int) -> float:
    """(d): the torch engine (bf16 on CUDA) on uint8 batches in memory: copy, normalise, forward, softmax."""
    import torch

    from uiaa_cli.models.engines import open_engine

    torch.backends.cudnn.benchmark = plan.device.startswith("cuda")
    engine = open_engine(str(checkpoint), "torch", plan.device, note=lambda line: None)
    pixels = np.random.default_rng(0).integers(0, 256, (plan.batch, size, size, 3), dtype=np.uint8)
    engine(pixels)
    engine(pixels)  # cuDNN's kernel choice
    start = time.perf_counter()
    for _ in range(plan.fwd_batches):
        engine(pixels)  # returns numpy: waits for the device
    return plan.fwd_batches * plan.batch / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ main


def describe(device: str) -> str:
    import platform

    import torch
    import torchvision

    what = f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}, " \
           f"{os.cpu_count()} cores"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda}), {what}"
    return f"CPU, {what}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every row on CPU at tiny sizes (seconds)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (the smoke run: cpu)")
    parser.add_argument("--rows", default="a,b,c,d,e", help="which rows, e.g. a,e")
    parser.add_argument("--no-compile", action="store_true",
                        help="no torch.compile: no compiled rows in (a), train with --compile off in (b)")
    parser.add_argument("--budget", type=float, default=330, help="seconds after which no row starts")
    args = parser.parse_args()
    import torch

    plan = smoke_plan() if args.smoke else Plan(device=args.device)
    if args.smoke:  # one thread: on a shared, busy machine OpenMP's spinning threads cost 10x at these sizes
        torch.set_num_threads(1)
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine, or with --smoke for the CPU check")
        return 1
    missing = [name for name in ("h5py", "pandas", "pyarrow", "PIL", "torchvision") if not module_found(name)]
    if missing:
        print(f"bench_gpu: rows b-e need {', '.join(missing)}, missing here: pip install {' '.join(missing)}")
    rows = set(args.rows.split(","))
    compile_note = ""
    if not args.no_compile and plan.device.startswith("cuda"):
        from uiaa_cli.training.runtime import compile_problem

        problem = compile_problem(torch.device(plan.device))
        if problem:  # train's --compile auto runs eagerly here too
            compile_note, args.no_compile = f" (torch.compile cannot run here: {problem})", True
    if args.no_compile:
        plan.compile = "off"
    # Under --smoke the compiled rows would time a C++ build, not a model: they run on CUDA only.
    compiled = [False] if args.no_compile or not plan.device.startswith("cuda") else [False, True]
    deadline = time.perf_counter() + args.budget
    small, big = plan.sizes
    print(f"bench_gpu{' --smoke' if args.smoke else ''}: {plan.arch}, batch {plan.batch}, on {describe(plan.device)}")
    print(f"autocast: {'bf16' if plan.device.startswith('cuda') else 'none (CPU: float32)'}; "
          f"{'compiled rows: on' if True in compiled else 'compiled rows: off (CUDA only, or --no-compile)'}"
          f"{compile_note}\n")
    table = Table()
    got = table.rows
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        folder = Path(tmp)
        if "a" in rows:
            for size in plan.sizes:
                for c in [c for c in compiled if size == big or not c]:  # compiled: train's size only
                    name = f"{plan.arch} fwd+bwd+step, {size} px, {'compiled' if c else 'eager'}, on-device batch"

                    def row_a(size: int = size, c: bool = c, name: str = name) -> None:
                        ips, first = step_rate(plan, size, c)
                        got[f"a{size}{'c' if c else 'e'}"] = ips
                        table.add("a", name, rate(ips), f"first step {first:.1f} s")
                    ok &= table.guarded("a", name, row_a, deadline)

        cache: list[Path] = []

        def need_cache() -> Path:
            if not cache:
                cache.append(make_cache(folder / "cache", plan, big))
            return cache[0]

        if "b" in rows:
            name = f"train from a jpeg cache, {big} px ({plan.cache_n:,} images, last of {plan.epochs} epochs)"

            def row_b() -> None:
                b = train_from_cache(plan, need_cache(), folder / "run-cpu", decode="cpu", compile=plan.compile)
                got["b"], got["b_after_epoch"], got["b_set_up"] = b["rate"], b["after_epoch"], b["set_up"]
                got["b_val"] = b["val"]
                got["b_first_extra"] = b["first_epoch"] - b["seen"] / b["rate"]
                # against the limit the trainer's own setting runs (compiled on CUDA, eager on the CPU)
                limit = got.get(f"a{big}c", got.get(f"a{big}e"))
                ratio = f"{b['rate'] / limit:.0%} of (a) at {big} px (bar 85%)" if limit else "(a) not measured"
                table.add("b", name, rate(b["rate"]), f"{ratio}; whole run {b['wall']:.1f} s, set-up "
                                                      f"{b['set_up']:.1f} s, first epoch {b['first_epoch']:.1f} s")
            ok &= table.guarded("b", name, row_b, deadline)

        if "c" in rows:
            from uiaa_cli.training.runtime import default_workers

            workers = default_workers()  # what the trainer's loader starts
            name = f"loader alone: {workers} CPU worker processes (Pillow), {big} px"

            def row_c_cpu() -> None:
                got["c_cpu"] = loader_rate(plan, need_cache(), workers)
                table.add("c", name, rate(got["c_cpu"]), "batches moved to the device")
            ok &= table.guarded("c", name, row_c_cpu, deadline)
            name = f"loader alone: --decode gpu (decode_jpeg on {plan.device}, a batch a call), {big} px"

            def row_c_dev() -> None:
                got["c_dev"] = device_decode_rate(plan, need_cache())
                vs = f"{got['c_dev'] / got['c_cpu']:.2f}x the CPU workers" if "c_cpu" in got else ""
                table.add("c", name, rate(got["c_dev"]), vs)
            ok &= table.guarded("c", name, row_c_dev, deadline)

        if "d" in rows or "e" in rows:
            ckpt = folder / "model.pt"
            name = f"predict, torch engine, {small} px: whole command on {plan.photos:,} JPEGs of " \
                   f"{plan.photo_wh[0]}x{plan.photo_wh[1]}"

            def row_d() -> None:
                make_checkpoint(ckpt, plan, small)
                photos = folder / "predict"
                make_photos(photos, plan.photos, plan.photo_wh)
                got["d_fwd"] = forward_rate(plan, ckpt, small)
                got["d_whole"] = predict_whole(plan, photos, ckpt, folder / "preds.csv")
                table.add("d", name, rate(got["d_whole"]),
                          f"{got['d_whole'] / got['d_fwd']:.0%} of forward-only (default --workers)")
                table.add("d", f"predict, torch engine, {small} px: forward only, uint8 batches in memory",
                          rate(got["d_fwd"]))
                got["d_fwd_big"] = forward_rate(plan, ckpt, big)
                table.add("d", f"predict, torch engine, {big} px: forward only (for e)", rate(got["d_fwd_big"]))
            ok &= table.guarded("d", name, row_d, deadline)

        if "e" in rows:
            name = f"projected AVA: {AVA_EPOCHS} epochs at {big} px + the test pass"

            def row_e() -> None:
                missing = [k for k in ("b", "d_fwd_big") if k not in got]
                if missing:
                    raise RuntimeError(f"needs rows {', '.join(sorted({m[0] for m in missing}))}")
                # validation and the test pass: forward at big px, as fast as the loader allows
                val_rate = min(got["d_fwd_big"], got.get("c_cpu", got["d_fwd_big"]))
                test_rate = val_rate * min(1.0, got.get("d_whole", 1.0) / got.get("d_fwd", 1.0))
                train_s = AVA_EPOCHS * (AVA_TRAIN - AVA_VAL) / got["b"]
                # after an epoch: (b)'s own validation, counted in AVA_VAL's already, then the checkpoints
                after = max(got["b_after_epoch"] - got["b_val"] / val_rate, 0.0)
                val_s = AVA_EPOCHS * (AVA_VAL / val_rate + after)
                fixed = got["b_set_up"] + max(got["b_first_extra"], 0.0)
                test_s = AVA_TEST / test_rate
                total = train_s + val_s + fixed + test_s
                table.add("e", name, f"{total / 60:.1f} min" if total < 6000 else f"{total / 3600:,.0f} h",
                          f"train {train_s / 60:.1f} + validation {val_s / 60:.1f} + test {test_s / 60:.1f} + "
                          f"set-up/compile {fixed / 60:.1f} min (bar 15 min)")
            ok &= table.guarded("e", name, row_e, deadline)
        if "b" in rows and plan.device.startswith("cuda"):
            name = f"train from a jpeg cache, {big} px, --decode gpu (last of {plan.epochs} epochs)"

            def row_b_gpu() -> None:
                b = train_from_cache(plan, need_cache(), folder / "run-gpu", decode="gpu", compile=plan.compile)
                vs = f"{b['rate'] / got['b']:.2f}x --decode cpu" if "b" in got else ""
                table.add("b", name, rate(b["rate"]), f"{vs}; whole run {b['wall']:.1f} s")
            ok &= table.guarded("b", name, row_b_gpu, deadline)
    if args.smoke:
        print("\n(--smoke: tiny sizes on CPU; the figures check the script, not a GPU)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
