"""The paper's AVA experiment in one command: split, cache, train, predict, evaluate, and its Table III row.

    python examples/ava.py AVA_DIR                  # ResNet-50, gauss-mv, ce, 5 epochs, 384 px (make ava AVA=DIR)
    python examples/ava.py AVA_DIR --kind rsd       # Table II: another kind of target
    python examples/ava.py AVA_DIR --lam 0.3        # Fig. 6: the lambda ablation
    python examples/ava.py DIR --device cpu --arch resnet18 --weights none --size 32 --epochs 1 --out RUN  # smoke

AVA_DIR holds ``AVA.txt``, ``generic_test.jpgl`` (the standard test list) and ``images/``. Every stage
is the real ``uiaa`` command, echoed as it would be typed and run in this process (torch loads once).
Re-running the same command skips what is complete and continues what is not:

    stage     writes (in --out)                    complete when
    split     train.csv, test.csv                  both exist (uiaa writes tables atomically)
    cache     train-<S>.h5, test-<S>.h5            the file exists: a cache gets its name only once
                                                   finished; otherwise 'uiaa cache --resume' continues
                                                   the interrupted build (OUT.partial)
    train     runs/<name>/                         last.pt has reached --epochs (and best.pt exists); otherwise
                                                   'uiaa train --resume' continues from last.pt
    predict   runs/<name>/test-preds.csv           it exists (joined atomically at the end); otherwise
                                                   'uiaa predict --resume' continues FILE.partial/
    evaluate  runs/<name>/test-metrics.json        it exists (written atomically)

The caches are per size and shared by every run (train's --kind derives any kind and lambda from
their votes); the run's folder is named by its settings, so Table II and Fig. 6 are the same command
with another flag, into the same --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from commands import uiaa  # noqa: E402 - the real commands, in this process (examples/commands.py)

# The paper's ResNet-50 row of Table III (AVA, standard split; 5 epochs, about half a GPU-day).
# Columns it does not give here are None and print as "-".
PAPER = {
    "resnet50": {"accuracy": 0.8035, "srcc": 0.714, "pcc": 0.716, "mse": None, "kl": None, "emd": 0.066,
                 "std_srcc": 0.247, "std_pcc": None, "epochs": 5, "hours": 12.0},
}
COLUMNS = [("accuracy", "accuracy"), ("srcc", "SRCC"), ("pcc", "PCC"), ("mse", "MSE"), ("kl", "KL"),
           ("emd", "EMD"), ("std_srcc", "std SRCC"), ("std_pcc", "std PCC")]

# Estimates for "what it needs" (labelled so when printed; none of them measured on this project):
JPEG_SHARE = 0.22  # bytes of the jpeg:95 store per image / raw S*S*3 (17-22 % on our test photos)
TRAIN_RATE = {  # ResNet-50 training, images/s at 384 px, bf16, by device name (first match)
    "H200": 1300, "H100": 1300, "GH200": 1300, "A100": 800, "L40": 700, "4090": 700, "V100": 400,
    "3090": 400, "A10": 300, "L4": 200, "T4": 120,
}
OTHER_CUDA_RATE, MPS_RATE, CPU_RATE_PER_CORE = 300, 30, 0.5
ARCH_COST = {  # time per image against ResNet-50 (rough: FLOPs, tempered for the memory-bound nets)
    "resnet18": 0.45, "resnet34": 0.8, "resnet50": 1.0, "resnet101": 1.8, "resnet152": 2.6, "vgg16": 3.5,
    "vgg16_bn": 3.6, "efficientnet_b0": 0.8, "convnext_tiny": 1.2, "mobilenet_v3_large": 0.4,
}
PREDICT_SPEEDUP = 3.0      # a forward pass against forward + backward + step
CACHE_RATE_PER_CORE = 80   # AVA JPEGs decoded (draft mode) and resized per second and core


def must(status: int, what: str, ok: tuple[int, ...] = (0,)) -> None:
    if status == 130:
        sys.exit(f"ava: '{what}' was interrupted; run the same command again to continue where it stopped")
    if status not in ok:
        sys.exit(f"ava: '{what}' failed with exit status {status}; fix it and run the same command again "
                 "(what is complete is kept)")


def skip(stage: str, why: str) -> None:
    print(f"\n[{stage}] complete, skipped: {why}", flush=True)


def split_counts(ava: Path) -> tuple[int, int]:
    """Images in AVA.txt, and how many of them the test list names (it also names a few AVA lacks)."""
    with open(ava / "AVA.txt", "rb") as f:
        ids = {parts[1] for parts in (line.split() for line in f) if len(parts) > 1}
    with open(ava / "generic_test.jpgl", "rb") as f:
        tests = {line.strip().removesuffix(b".jpg") for line in f if line.strip()}
    return len(ids), len(ids & tests)


def pick_device(name: str) -> tuple[str, str]:
    """(the device train will use, its description), by train's own rule (models/devices.pick_device)."""
    import torch

    from uiaa_cli.errors import UiaaError
    from uiaa_cli.models.devices import pick_device as device_rule

    try:
        device = device_rule(name)
    except UiaaError:
        return name, name  # a device that is not here: train says so in one line
    if device.type == "cuda":
        return str(device), torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return "cpu", f"CPU, {os.cpu_count()} cores"
    return str(device), str(device)


def train_rate(device: str, description: str, arch: str, size: int) -> float:
    """Estimated training images/s for ``arch`` at ``size`` px on the device."""
    if device.startswith("cuda"):
        rate = next((r for key, r in TRAIN_RATE.items() if key in description), OTHER_CUDA_RATE)
    elif device == "mps":
        rate = MPS_RATE
    else:
        rate = CPU_RATE_PER_CORE * (os.cpu_count() or 1)
    return rate / ARCH_COST.get(arch, 1.0) * (384 / size) ** 2


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def in_bytes(n: float) -> str:
    """Decimal units, as disks are sold (and as 'uiaa cache --info' prints)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def needs(args: argparse.Namespace, ava: Path, out: Path) -> None:
    """Print the disk the caches take and the time the run takes on the device found (estimates)."""
    images, tests = split_counts(ava)
    train_n = images - tests
    disk = images * args.size ** 2 * 3 * JPEG_SHARE
    free = shutil.disk_usage(out if out.exists() else out.parent if out.parent.exists() else Path(".")).free
    device, description = pick_device(args.device)
    rate = train_rate(device, description, args.arch, args.size)
    cores = os.cpu_count() or 1
    cache_s = images / (CACHE_RATE_PER_CORE * cores)
    train_s = args.epochs * 0.9 * train_n / rate + args.epochs * 0.1 * train_n / (rate * PREDICT_SPEEDUP)
    test_s = tests / (rate * PREDICT_SPEEDUP)
    print(f"ava: {images:,} images in {ava / 'AVA.txt'}: {train_n:,} to train on (10% of them held out for "
          f"validation), {tests:,} in the test list")
    print(f"ava: disk: about {in_bytes(disk)} for the two caches (jpeg:95, {args.size} px: ~{JPEG_SHARE:.0%} of "
          f"raw per image; estimate), {in_bytes(free)} free in {out}"
          + ("  ** NOT ENOUGH **" if disk > free else ""))
    print(f"ava: time on {description} ({device}), estimated, not measured: caching ~{duration(cache_s)} "
          f"({cores} cores), training ~{duration(train_s)} ({args.epochs} epoch{'s' if args.epochs > 1 else ''} of "
          f"{args.arch} at ~{rate:,.0f} images/s, validation included), test pass ~{duration(test_s)}", flush=True)


def run_name(args: argparse.Namespace) -> str:
    weights = args.weights if args.weights in ("imagenet", "none") else Path(args.weights).stem
    kind = f"{args.kind}-lam{args.lam:g}" if args.kind == "gauss-mv" else args.kind
    return f"{args.arch}-{weights}-{args.size}px-{kind}-{args.loss}-{args.epochs}ep"


def epochs_done(run: Path) -> int:
    """The epochs ``run/last.pt`` has finished (0 without one)."""
    if not (run / "last.pt").exists():
        return 0
    from uiaa_cli.training.checkpoints import load_resume

    return int(load_resume(run)["resume"]["epoch"])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def value(x: float | None, percent: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{100 * x:.2f}%" if percent else f"{x:.3f}"


def table_row(args: argparse.Namespace, metrics: dict, run: Path, device: str) -> str:
    """The Table III row of this run, the paper's beside it."""
    from uiaa_cli.tables.table import read_table

    history = read_table(run / "metrics.csv")
    hours = float(sum(float(s) for s in history["seconds"])) / 3600
    head = ["", *[label for _, label in COLUMNS], "epochs", "train hours"]
    mine = [f"this run ({device})", *[value(metrics.get(k), k == "accuracy") for k, _ in COLUMNS],
            str(len(history)), f"{hours:.3f}"]
    paper = PAPER.get(args.arch, PAPER["resnet50"])
    shown = args.arch if args.arch in PAPER else "resnet50"
    rows = [head, mine, [f"paper ({shown})", *[value(paper[k], k == "accuracy") for k, _ in COLUMNS],
                         str(paper["epochs"]), f"~{paper['hours']:g} (GPU)"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"Table III: AVA, standard split, {args.arch} ({args.weights}), {args.kind}, {args.loss}, "
             f"{args.size} px, {metrics['images']:,} test images"]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in rows]
    if shown != args.arch:
        lines.append(f"(the paper's figures kept here are ResNet-50's; this run is {args.arch})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="The paper's AVA experiment: split, cache, train, predict, "
                                                 "evaluate; prints the Table III row beside the paper's.")
    parser.add_argument("ava", type=Path, metavar="AVA_DIR", help="holds AVA.txt, generic_test.jpgl, images/")
    parser.add_argument("--out", type=Path, default=Path("ava-experiment"), help="working folder")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--kind", default="gauss-mv", help="target kind (uiaa train --kind)")
    parser.add_argument("--loss", default="ce")
    parser.add_argument("--epochs", type=int, default=5, help="the paper's ResNet-50 schedule: 5")
    parser.add_argument("--lam", type=float, default=0.5, help="gauss-mv's lambda (Fig. 6)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--size", type=int, default=384, help="image side of the caches (pixels)")
    args = parser.parse_args()
    ava, out = args.ava, args.out
    for name in ("AVA.txt", "generic_test.jpgl", "images"):
        if not (ava / name).exists():
            sys.exit(f"ava: {ava / name}: missing (AVA_DIR holds AVA.txt, generic_test.jpgl and images/)")
    started = time.perf_counter()
    needs(args, ava, out)
    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = out / "train.csv", out / "test.csv"

    # split: everything but the test list, and only the test list (the labels' own kind is gauss-mv;
    # train --kind derives the kind asked for from the votes the tables carry)
    if train_csv.exists() and test_csv.exists():
        skip("split", f"{train_csv} and {test_csv} exist")
    else:
        for table, option in ((train_csv, "--exclude"), (test_csv, "--only")):
            # 1: some lines of AVA.txt were unreadable (named on stderr), the table holds the rest
            must(uiaa("labels", ava / "AVA.txt", option, ava / "generic_test.jpgl", "-o", table)[0], "uiaa labels",
                 ok=(0, 1))

    # cache: jpeg store at --size; exit status 1 means some images were skipped (listed): go on
    caches = {}
    for side, table in (("train", train_csv), ("test", test_csv)):
        cache = caches[side] = out / f"{side}-{args.size}.h5"
        if cache.exists():
            skip("cache", f"{cache} exists (a cache is named only once finished)")
            continue
        must(uiaa("cache", table, "--images", ava / "images", "--size", args.size, "-o", cache, "--resume")[0],
             "uiaa cache", ok=(0, 1))

    # train: the paper's schedule (train's default rate for the kind and loss, decayed 10x over the epochs)
    run = out / "runs" / run_name(args)
    done = epochs_done(run)
    if done >= args.epochs and not (run / "best.pt").exists():
        sys.exit(f"ava: {run} finished its {done} epochs without a usable model (no best.pt; see its metrics.csv): "
                 "change the settings, or delete the folder to train again")
    if done >= args.epochs:
        skip("train", f"{run / 'last.pt'} has finished its {done} epochs")
    elif done or (run / "last.pt").exists():
        must(uiaa("train", "--resume", run, "--device", args.device)[0], "uiaa train --resume")
    else:
        must(uiaa("train", caches["train"], "--arch", args.arch, "--kind", args.kind, "--loss", args.loss,
                  "--epochs", args.epochs, "--lam", args.lam, "--device", args.device, "--weights", args.weights,
                  "--out", run)[0], "uiaa train")

    # predict the official test set with the checkpoint train chose (best.pt); the torch engine:
    # the scores of the network as trained (auto would export it for ONNX Runtime on a CPU)
    preds = run / "test-preds.csv"
    if preds.exists():
        skip("predict", f"{preds} exists")
    else:
        must(uiaa("predict", caches["test"], "-m", run / "best.pt", "-o", preds, "--resume",
                  "--device", args.device, "--engine", "torch")[0],
             "uiaa predict", ok=(0, 1))

    # evaluate against the test labels (every test image of AVA.txt: one the cache skipped is reported)
    result = run / "test-metrics.json"
    if result.exists():
        skip("evaluate", f"{result} exists")
    else:
        status, text = uiaa("evaluate", preds, test_csv, "--json", capture=True)
        must(status, "uiaa evaluate")
        write_atomic(result, text)
    metrics = json.loads(result.read_text())
    device = pick_device(args.device)[1]
    print("\n" + table_row(args, {**metrics["metrics"], "images": metrics["images"]}, run, device))
    print(f"\nava: finished in {time.perf_counter() - started:.0f} s; the run, its predictions and metrics: {run}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # cache and predict keep their partial work for --resume
        print("\nava: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        sys.exit(130)
