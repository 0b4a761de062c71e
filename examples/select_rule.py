"""Which epoch should best.pt hold? Train on the example data and score every epoch on held-out images.

    python examples/select_rule.py [--out select] [--epochs 6] [--size 32] [--seeds 0 1]

For each configuration (kind, loss) and seed, one real training run (uiaa_cli.training.trainer, resnet18 from
scratch, the split and settings of `uiaa train`) validates on its usual 10% after every epoch, as
`uiaa train` does, and this script also scores that epoch's model on the 150 held-out test images
(never seen by training or by the rule). Each rule of `train --select` then picks an epoch from the
validation metrics alone; the table shows the held-out SRCC and MSE of the epoch each rule picks, and
of the best epoch in hindsight. The default of `--select` is the rule with the best mean held-out
figures (README: "Which epoch best.pt holds").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from demo import uiaa  # noqa: E402
from make_examples import make_examples  # noqa: E402

CONFIGS = ("gauss-mv/ce", "gauss-mv/mse", "soft/ce")


def run(out: Path, train: Path, test: Path, loss: str, seed: int, epochs: int) -> list[dict]:
    """One training run; per epoch, its validation row and the held-out metrics of that epoch's model."""
    import torch

    from uiaa_cli import metrics
    from uiaa_cli.losses import activate
    from uiaa_cli.targets.table_targets import labels_of
    from uiaa_cli.training.data import open_source
    from uiaa_cli.training.report import Reporter
    from uiaa_cli.training.runtime import init_distributed
    from uiaa_cli.training.settings import TrainSettings
    from uiaa_cli.training.trainer import Trainer

    class Probe(Trainer):
        def end_epoch(self, epoch: int, reporter: Reporter) -> None:
            super().end_epoch(epoch, reporter)
            rows, outputs = self.outputs(held_out, np.arange(len(held_out.table)))
            probs = activate(torch.from_numpy(outputs), self.activation).numpy().astype(np.float64)
            score, std = metrics.predicted_score(probs, self.bins)
            lab = labels_of(held_out.table, str(test), self.bins)
            found = metrics.evaluate(score, lab.mean[rows], lab.threshold, kind=self.kind,
                                     activation=self.activation, probs=probs, std=std, true_std=lab.std[rows],
                                     rsd=lab.rsd[rows])
            held_out_rows.append({k: found[k] for k in ("srcc", "mse", "std_srcc")})

    held_out_rows: list[dict] = []
    settings = TrainSettings(data=str(train), arch="resnet18", loss=loss, epochs=epochs, weights="none",
                             device="cpu", workers=0, seed=seed, out=str(out), quiet=False)
    dist = init_distributed("cpu")
    trainer = Probe(settings, dist)
    held_out = open_source(str(test), images=None, size=trainer.size, workers=0)
    trainer.run(Reporter(True, False))
    trainer.close()
    held_out.close()
    return [dict(row, test=found) for row, found in zip(trainer.history, held_out_rows)]


def main() -> None:
    from uiaa_cli.training.settings import SELECT_RULES, best_epoch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("select"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="KIND/LOSS pairs")
    args = parser.parse_args()
    out: Path = args.out
    data = out / "examples"
    if not (data / "AVA.txt").exists():
        make_examples(data)
    results = []
    for kind, loss in (c.split("/") for c in args.configs):
        tables = {}
        for part, flag in (("train", "--exclude"), ("test", "--only")):
            tables[part] = out / f"{kind}-{part}.h5"
            if not tables[part].exists():
                uiaa("labels", data / "AVA.txt", "--kind", kind, flag, data / "test.jpgl", "-o",
                     out / f"{kind}-{part}.csv")
                uiaa("cache", out / f"{kind}-{part}.csv", "--images", data / "images", "--size", args.size,
                     "-o", tables[part])
        for seed in args.seeds:
            log = out / f"{kind}-{loss}-{seed}.json"
            if not log.exists():
                started = time.perf_counter()
                history = run(out / f"run-{kind}-{loss}-{seed}", tables["train"], tables["test"], loss, seed,
                              args.epochs)
                log.write_text(json.dumps({"history": history, "seconds": time.perf_counter() - started}))
            history = json.loads(log.read_text())["history"]
            picks = {rule: best_epoch(history, rule) for rule in SELECT_RULES}
            picks["hindsight"] = int(np.nanargmax([h["test"]["srcc"] or np.nan for h in history]))
            results.append({"kind": kind, "loss": loss, "seed": seed,
                            "picks": {rule: (None, None) if i is None else (history[i]["epoch"], history[i]["test"])
                                      for rule, i in picks.items()}})
    rules = [*SELECT_RULES, "hindsight"]

    def cell(epoch: int | None, found: dict | None) -> str:
        if found is None:  # no epoch had finite validation figures: train would keep no best.pt
            return "no epoch"
        mse = "n/a" if found["mse"] is None else f"{found['mse']:.2f}"
        return f"e{epoch} {found['srcc']:.3f} / {mse}"

    def mean(rule: str, what: str) -> float:
        found = [r["picks"][rule][1] for r in results]
        return float(np.nanmean([np.nan if f is None or f[what] is None else f[what] for f in found]))

    print(f"\nheld-out SRCC / MSE of the epoch each rule picks ({args.epochs} epochs, {args.size} px, "
          f"resnet18 from scratch):")
    print(f"{'kind':<9}{'loss':<5}{'seed':>4}  " + "".join(f"{r:>20}" for r in rules))
    for r in results:
        print(f"{r['kind']:<9}{r['loss']:<5}{r['seed']:>4}  " + "".join(f"{cell(*r['picks'][k]):>20}" for k in rules))
    for what in ("srcc", "mse"):
        print(f"{'mean ' + what:<20}" + "".join(f"{mean(k, what):>20.3f}" for k in rules))

if __name__ == "__main__":
    main()
