"""The whole uiaa pipeline on the example data, on CPU, in a few minutes (``make demo``).

    make examples -> uiaa labels (train/test split) -> uiaa cache -> uiaa train -> uiaa predict
    -> uiaa evaluate

Every step is the real ``uiaa`` command, run as a subprocess and echoed as it would be typed.
Everything goes into ./demo/ (removed and rebuilt on each run). Prints the evaluation table on the
held-out images, their SRCC, and the best and worst few of them.

    python examples/demo.py [--epochs 12] [--size 48] [--kind rsd] [--lr 1e-2,1e-3] [--out demo]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_examples import make_examples  # noqa: E402

from uiaa_cli.tables.table import read_table  # noqa: E402

SRCC_BAR = 0.5      # the held-out SRCC of the mean score must beat this
STD_SRCC_BAR = 0.2  # ... and that of the predicted std (the model learned which pictures divide raters)


def uiaa(*args: object, capture: bool = False, echo: bool = True) -> str:
    """Run ``uiaa ARGS`` (this interpreter's installation), echoing the command line; stop on failure."""
    words = [str(a) for a in args]
    if echo:
        print(f"\n$ uiaa {shlex.join(words)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "uiaa_cli", *words], text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        sys.exit(f"demo: 'uiaa {words[0]}' failed with exit status {result.returncode}")
    return result.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description="Run labels -> cache -> train -> predict -> evaluate on the "
                                                 "example data.")
    parser.add_argument("--out", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=48, help="image side for training (pixels)")
    parser.add_argument("-n", type=int, default=600, help="number of example images")
    parser.add_argument("--kind", default="rsd", help="label kind (uiaa labels --kind)")
    parser.add_argument("--lr", default="1e-2,1e-3", help="learning rates START,END (uiaa train --lr)")
    parser.add_argument("--bar", type=float, default=SRCC_BAR, help="fail unless the held-out SRCC is above")
    parser.add_argument("--std-bar", type=float, default=STD_SRCC_BAR,
                        help="fail unless the held-out std SRCC is above")
    args = parser.parse_args()
    start = time.perf_counter()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    data = out / "examples"

    print(f"$ python examples/make_examples.py {data} -n {args.n}")
    make_examples(data, args.n)
    print(f"{args.n} images in {data}/images, votes in {data}/AVA.txt, held-out ids in {data}/test.jpgl")

    # The standard AVA split is two commands: everything but the held-out ids, and only those.
    uiaa("labels", data / "AVA.txt", "--kind", args.kind, "--exclude", data / "test.jpgl", "-o", out / "train.csv")
    uiaa("labels", data / "AVA.txt", "--kind", args.kind, "--only", data / "test.jpgl", "-o", out / "test.csv")
    uiaa("cache", out / "train.csv", "--images", data / "images", "--size", args.size, "-o", out / "train.h5")
    # From scratch (no ImageNet weights offline); best.pt is picked on 10% of train, never on test.
    uiaa("train", out / "train.h5", "--arch", "resnet18", "--weights", "none", "--epochs", args.epochs,
         "--lr", args.lr, "--device", "cpu", "--out", out / "run")
    uiaa("predict", out / "test.csv", "--images", data / "images", "-m", out / "run" / "best.pt",
         "-o", out / "preds.csv")
    table = uiaa("evaluate", out / "preds.csv", out / "test.csv", capture=True)
    print(table, end="")
    found = json.loads(uiaa("evaluate", out / "preds.csv", out / "test.csv", "--json", "-q",
                            capture=True, echo=False))["metrics"]
    # None: undefined (every prediction the same) or not applicable
    srcc, std_srcc = (float("nan") if found[k] is None else found[k] for k in ("srcc", "std_srcc"))

    preds, labels = read_table(out / "preds.csv"), read_table(out / "test.csv")
    mean = dict(zip(labels["image"].tolist(), labels["mean"].tolist()))
    order = np.argsort(preds["score"])
    print("\nBest and worst held-out images (predicted score, mean vote):")
    for title, rows in (("best", order[::-1][:3]), ("worst", order[:3])):
        for i in rows:
            name = preds["image"][i]
            print(f"  {title:<5}  {data / 'images' / (name + '.jpg')}  predicted {preds['score'][i]:.2f}  "
                  f"votes {mean[name]:.2f}")

    def verdict(value: float, bar: float) -> str:
        return f"{value:.3f} ({'above' if value > bar else 'NOT above'} {bar})"

    print(f"\nHeld-out SRCC {verdict(srcc, args.bar)}, std SRCC {verdict(std_srcc, args.std_bar)} on "
          f"{len(preds)} images; demo finished in {time.perf_counter() - start:.0f} s")
    if not (srcc > args.bar and std_srcc > args.std_bar):
        sys.exit(1)


if __name__ == "__main__":
    main()
