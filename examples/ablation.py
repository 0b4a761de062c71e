"""The unified formulation's ablation: label kinds x losses x seeds, through the real ``uiaa`` commands.

    python examples/ablation.py --out ablation                 # the default grid on the example data
    python examples/ablation.py --quick --out /tmp/abl         # a tiny grid, about a minute
    python examples/ablation.py train.h5 --test test.h5 --out ava-grid \\
        --device cuda:0 --arch resnet50 --weights imagenet --epochs 10   # AVA, on a GPU

For every cell of the grid the script runs, as a user would:

    uiaa train TRAIN --kind K --loss L --seed S ...   (one cache serves every kind: --kind)
    uiaa predict TEST -m RUN/best.pt -o RUN/preds.csv
    uiaa evaluate RUN/preds.csv TEST --json

and writes into --out:

    results.csv   a row per run: kind, loss, seed, lr, epochs, every metric of evaluate, wall time, flags
    summary.csv   mean and std over the seeds per kind and loss (flagged runs left out), and how many
    ablation.png  SRCC and accuracy per kind and loss: each seed a dot, the mean and +- 1 std a bar

A run is flagged, and left out of the averages, when its training loss went NaN/inf (``diverged``)
or the validation SRCC of the epoch best.pt holds (the model scored) does not beat chance (``chance``:
below 2/sqrt(n_val), two standard errors of the SRCC of a model that ranks at random). Without TRAIN
the example data set is made (examples/make_examples.py), split into train and test like AVA's
standard split, and cached.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from commands import uiaa as run_uiaa  # noqa: E402
from make_examples import make_examples  # noqa: E402

from uiaa_cli.tables.table import Table, read_table  # noqa: E402
from uiaa_cli.tables.writers import write_table  # noqa: E402

KINDS = ("binary", "soft", "rsd", "gauss-nv", "gauss-mv")
LOSSES = ("ce", "mse", "huber", "emd")
# The default grid: every kind with ce (the paper's claim: gauss-mv best), and gauss-mv with every loss
# (the claim: ce as good as the regression losses). The whole 5 x 4 grid with --kinds all --losses all.
DEFAULT_CELLS = [(k, "ce") for k in KINDS] + [("gauss-mv", loss) for loss in ("mse", "huber", "emd")]


def uiaa(*args: object, log: Path | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    """``uiaa ARGS`` in this process (examples/commands.py), echoed; stderr appended to ``log``."""
    words = [str(a) for a in args]
    print(f"$ uiaa {shlex.join(words)}", flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as err:
        status, out = run_uiaa(*words, capture=True, stderr=err, echo=False)
    return subprocess.CompletedProcess(words, status, out if capture else None)


def example_data(out: Path, n: int, size: int) -> tuple[Path, Path]:
    """The example set, split like AVA (test ids held out), labelled gauss-mv and cached at ``size``."""
    data = out / "examples"
    print(f"$ python examples/make_examples.py {data} -n {n}", flush=True)
    make_examples(data, n)
    split = [("train", "--exclude"), ("test", "--only")]
    for name, option in split:
        done = uiaa("labels", data / "AVA.txt", option, data / "test.jpgl", "-o", out / f"{name}.csv", "-q")
        if done.returncode:
            sys.exit(f"ablation: uiaa labels failed ({done.returncode})")
        done = uiaa("cache", out / f"{name}.csv", "--images", data / "images", "--size", size, "-o",
                    out / f"{name}.h5", "-q")
        if done.returncode:
            sys.exit(f"ablation: uiaa cache failed ({done.returncode})")
    return out / "train.h5", out / "test.h5"


def parse_grid(kinds: str, losses: str) -> list[tuple[str, str]]:
    """``--kinds``/``--losses`` comma lists (or 'all'); both omitted: the default cells."""
    if kinds == "default" and losses == "default":
        return list(DEFAULT_CELLS)
    ks = KINDS if kinds in ("all", "default") else tuple(kinds.split(","))
    ls = LOSSES if losses == "all" else ("ce",) if losses == "default" else tuple(losses.split(","))
    for k in ks:
        if k not in KINDS:
            sys.exit(f"ablation: unknown kind {k!r} (choose from {', '.join(KINDS)})")
    for loss in ls:
        if loss not in LOSSES:
            sys.exit(f"ablation: unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    return [(k, loss) for k in ks for loss in ls]


def run_cell(args: argparse.Namespace, train: Path, test: Path, kind: str, loss: str, seed: int) -> dict:
    """Train, predict and evaluate one cell; the row of results.csv."""
    folder = args.out / "runs" / f"{kind}-{loss}-s{seed}"
    log = args.out / "runs" / f"{kind}-{loss}-s{seed}.log"
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    row: dict = {"kind": kind, "loss": loss, "seed": seed, "epochs": args.epochs}
    started = time.perf_counter()
    train_args = ["train", train, "--kind", kind, "--loss", loss, "--seed", seed, "--epochs", args.epochs,
                  "--arch", args.arch, "--weights", args.weights, "--device", args.device,
                  "--batch-size", args.batch_size, "--out", folder, "--no-progress"]
    if args.size:
        train_args += ["--size", args.size]
    if args.images:
        train_args += ["--images", args.images]
    if args.lr:
        train_args += ["--lr", args.lr]
    if (folder / "last.pt").exists():  # a finished (or interrupted) run of an earlier call: continue it
        train_args = ["train", "--resume", folder, "--device", args.device, "--no-progress"]
    trained = uiaa(*train_args, log=log)
    history = read_table(folder / "metrics.csv") if (folder / "metrics.csv").exists() else None
    flags = []
    text = log.read_text()
    if history is not None and len(history):
        row["lr"] = float(history["lr"][0])
        row["lr_end"] = float(history["lr"][-1])
        # the epoch best.pt holds (the model predict scores), not the best of all epochs: a run whose
        # SRCC touched 0.5 once and ended at 0.1 is scored at 0.1
        kept = history["epoch"] == kept_epoch(text)
        row["val_srcc"] = float(history["srcc"][kept][0]) if kept.any() else math.nan
    if trained.returncode != 0:
        flags.append("diverged" if "the loss became" in text else f"train failed ({trained.returncode})")
    elif history is not None and not np.isfinite(history["train_loss"]).all():
        flags.append("diverged")
    best = folder / "best.pt"
    if trained.returncode == 0 and best.exists():
        preds = folder / "preds.csv"
        predicted = uiaa("predict", test, "-m", best, "-o", preds, "--device", args.device, *(
            ["--images", args.images] if args.images else []), log=log)
        evaluated = uiaa("evaluate", preds, test, "--json", "-q", log=log, capture=True) \
            if predicted.returncode in (0, 1) else None
        if evaluated is not None and evaluated.returncode == 0:
            metrics = json.loads(evaluated.stdout)["metrics"]
            row.update({k: (math.nan if v is None else float(v)) for k, v in metrics.items()
                        if v is None or isinstance(v, (int, float))})
        else:
            flags.append("evaluate failed")
    n_val = val_images(text)
    chance = 2 / math.sqrt(max(n_val - 1, 1)) if n_val else math.nan
    row["val_images"] = n_val
    if "val_srcc" in row and not flags and not row["val_srcc"] > chance:
        flags.append("chance")
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["flags"] = " ".join(flags)
    return row


def kept_epoch(train_log: str) -> int | None:
    """The epoch best.pt holds, from train's summary line ('uiaa train: best.pt  epoch N  ...')."""
    for line in train_log.splitlines():
        if "best.pt  epoch " in line:
            word = line.split("best.pt  epoch ", 1)[1].split()[0]
            return int(word) if word.isdigit() else None
    return None


def val_images(train_log: str) -> int:
    """The validation images of a run, from train's first line ('N training and M validation images')."""
    for line in train_log.splitlines():
        if "validation images" in line:
            words = line.split(" validation images")[0].split()
            try:
                return int(words[-1].replace(",", ""))
            except ValueError:
                return 0
    return 0


def results_table(rows: list[dict]) -> Table:
    """One row per run; metric columns in evaluate's order, missing values NaN."""
    fixed = ["kind", "loss", "seed", "lr", "lr_end", "epochs", "val_images", "val_srcc"]
    metrics = [k for k in rows[0] if k not in fixed + ["wall_s", "flags"]]
    for r in rows[1:]:
        metrics += [k for k in r if k not in fixed + ["wall_s", "flags"] and k not in metrics]
    names = fixed + metrics + ["wall_s", "flags"]
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if name in ("kind", "loss", "flags"):
            columns[name] = np.array([v or "" for v in values], dtype=str)
        elif name in ("seed", "epochs", "val_images"):
            columns[name] = np.array([v or 0 for v in values], dtype=np.int64)
        else:
            columns[name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return Table(columns)


def summary_table(results: Table) -> Table:
    """Mean and std over the unflagged seeds, per kind and loss (in the grid's order)."""
    metrics = [n for n in results.names if n not in ("kind", "loss", "seed", "lr", "lr_end", "epochs",
                                                       "val_images", "flags")]
    cells = list(dict.fromkeys(zip(results["kind"].tolist(), results["loss"].tolist(), strict=True)))
    columns: dict[str, list] = {"kind": [], "loss": [], "runs": [], "used": []}
    for name in metrics:
        columns[f"{name}_mean"], columns[f"{name}_std"] = [], []
    for kind, loss in cells:
        mine = (results["kind"] == kind) & (results["loss"] == loss)
        used = mine & (results["flags"] == "")
        columns["kind"].append(kind)
        columns["loss"].append(loss)
        columns["runs"].append(int(mine.sum()))
        columns["used"].append(int(used.sum()))
        for name in metrics:
            values = results[name][used]
            values = values[np.isfinite(values)]
            columns[f"{name}_mean"].append(float(values.mean()) if len(values) else math.nan)
            columns[f"{name}_std"].append(float(values.std(ddof=1)) if len(values) > 1 else math.nan)
    return Table({k: np.array(v, dtype=str if k in ("kind", "loss") else np.int64 if k in ("runs", "used")
                              else np.float64) for k, v in columns.items()})


def plot(results: Table, path: Path, title: str) -> None:
    """SRCC and accuracy per kind and loss: a dot per seed (hollow red: flagged), mean and +- 1 std."""
    from PIL import Image, ImageDraw

    cells = list(dict.fromkeys(zip(results["kind"].tolist(), results["loss"].tolist(), strict=True)))
    panels = [("srcc", "SRCC (test)"), ("accuracy", "accuracy (test)")]
    width, panel_h, left, top = max(480, 90 * len(cells) + 80), 260, 60, 36
    img = Image.new("RGB", (width, top + len(panels) * (panel_h + 60)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), title, fill="black")
    step = (width - left - 20) / max(len(cells), 1)
    for p, (metric, label) in enumerate(panels):
        y0 = top + p * (panel_h + 60)
        values = results[metric] if metric in results else np.full(len(results), np.nan)
        finite = values[np.isfinite(values)]
        lo = min(float(finite.min()) if len(finite) else 0.0, 0.0 if metric == "srcc" else 0.5)
        hi = max(float(finite.max()) if len(finite) else 1.0, lo + 0.05)
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad

        def y(v: float, y0: int = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + panel_h - (v - lo) / (hi - lo) * panel_h

        draw.rectangle([left, y0, width - 20, y0 + panel_h], outline="black")
        draw.text((4, y0 - 16), label, fill="black")
        for tick in np.linspace(lo + pad, hi - pad, 5):
            draw.line([left - 4, y(tick), left, y(tick)], fill="black")
            draw.text((4, y(tick) - 6), f"{tick:.2f}", fill="black")
        if metric == "srcc" and lo < 0 < hi:
            draw.line([left, y(0), width - 20, y(0)], fill=(180, 180, 180))
        for c, (kind, loss) in enumerate(cells):
            cx = left + step * (c + 0.5)
            mine = (results["kind"] == kind) & (results["loss"] == loss)
            used = mine & (results["flags"] == "") & np.isfinite(values)
            if used.any():
                mean = float(values[used].mean())
                std = float(values[used].std(ddof=1)) if used.sum() > 1 else 0.0
                draw.rectangle([cx - 14, y(mean + std), cx + 14, y(mean - std)], fill=(205, 222, 245))
                draw.line([cx - 18, y(mean), cx + 18, y(mean)], fill=(30, 90, 180), width=2)
            for k, v in enumerate(values[mine]):
                if not np.isfinite(v):
                    continue
                dx = (k - (mine.sum() - 1) / 2) * 5
                flagged = results["flags"][mine][k] != ""
                box = [cx + dx - 3, y(v) - 3, cx + dx + 3, y(v) + 3]
                draw.ellipse(box, outline=(200, 40, 40)) if flagged else draw.ellipse(box, fill="black")
            draw.text((cx - step / 2 + 4, y0 + panel_h + 6), kind, fill="black")
            draw.text((cx - step / 2 + 4, y0 + panel_h + 20), loss, fill="black")
    img.save(path, format="PNG")


def print_summary(summary: Table) -> None:
    print(f"\n{'kind':<9} {'loss':<6} {'runs':>4} {'used':>4}  {'SRCC':>15}  {'accuracy':>15}  {'PCC':>15}")
    def ms(name: str, r: int) -> str:
        m, s = summary[f"{name}_mean"][r], summary[f"{name}_std"][r]
        return "n/a" if not np.isfinite(m) else f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}"

    for r in range(len(summary)):
        print(f"{summary['kind'][r]:<9} {summary['loss'][r]:<6} {summary['runs'][r]:>4} {summary['used'][r]:>4}  "
              f"{ms('srcc', r):>15}  {ms('accuracy', r):>15}  {ms('pcc', r):>15}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split(
                                         "\n\n", 1)[1])
    parser.add_argument("train", nargs="?", type=Path, help="training labels table or cache (default: the "
                                                           "example data set, made and cached in --out)")
    parser.add_argument("--test", type=Path, help="held-out labels table or cache scored by evaluate "
                                                  "(required with TRAIN)")
    parser.add_argument("--images", help="image folder of labels tables (passed to train and predict)")
    parser.add_argument("--out", type=Path, default=Path("ablation"), help="output folder (default ./ablation)")
    parser.add_argument("--kinds", default="default", help="comma list, or all (default: every kind with ce, "
                                                           "and gauss-mv with every loss)")
    parser.add_argument("--losses", default="default", help="comma list, or all")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default="none", help="none (from scratch), imagenet, or a file")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the cache's; examples 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", help="START,END for every run (default: train's default per kind and loss)")
    parser.add_argument("-n", type=int, default=600, help="example images (default 600)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid in about a minute: 2 kinds x ce x 2 "
                                                             "seeds, 1 epoch, 160 example images")
    args = parser.parse_args()
    if args.quick:
        args.kinds, args.losses, args.seeds, args.epochs, args.n = "binary,gauss-mv", "ce", "0,1", 1, 160
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = parse_grid(args.kinds, args.losses)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.train is None:
        size = args.size or 32
        train, test = example_data(args.out, args.n, size)
        args.size = None  # the caches hold it
    else:
        if args.test is None:
            sys.exit("ablation: give the held-out set with --test (a labels table or cache)")
        train, test = args.train, args.test

    rows = []
    for seed in seeds:  # seed by seed: a grid stopped early still has every cell of the first seeds
        for kind, loss in cells:
            row = run_cell(args, train, test, kind, loss, seed)
            rows.append(row)
            flags = f"  [{row['flags']}]" if row["flags"] else ""
            print(f"  -> {kind} {loss} seed {seed}: test SRCC {row.get('srcc', math.nan):.3f}, accuracy "
                  f"{row.get('accuracy', math.nan):.3f}, {row['wall_s']:.0f} s{flags}", flush=True)
            write_table(results_table(rows), args.out / "results.csv")  # after every run: progress survives

    results = results_table(rows)
    summary = summary_table(results)
    write_table(summary, args.out / "summary.csv")
    where = "example data" if args.train is None else str(args.train)
    plot(results, args.out / "ablation.png", f"{where}: {args.arch}, {args.epochs} epochs, seeds {args.seeds}; "
                                             "bar = mean +- 1 std, hollow red = flagged")
    print_summary(summary)
    flagged = int((results["flags"] != "").sum())
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s, {flagged} flagged (left out of the means); "
          f"wrote {args.out / 'results.csv'}, {args.out / 'summary.csv'}, {args.out / 'ablation.png'}")


if __name__ == "__main__":
    main()
