"""Start-up of the torch-free commands, and ``evaluate`` on 20,000 rows.

Bars (SPEC §4): ``uiaa --help``, ``labels`` and ``evaluate`` under 0.5 s to first output (no torch
import); ``evaluate`` on 20,000 rows under 0.5 s after start-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import best_of, report, uiaa_exe

AVA_LINE = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n"


def first_output(command: list[str], stdin: bytes | None = None) -> float:
    """Seconds from start to the first byte on stdout or stderr."""
    t = time.perf_counter()
    p = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if stdin is not None:
        p.stdin.write(stdin)
    p.stdin.close()
    p.stdout.read(1)
    elapsed = time.perf_counter() - t
    p.stdout.read()
    p.wait()
    return elapsed


def make_evaluation_tables(tmp: Path, n: int) -> tuple[Path, Path]:
    from uiaa_cli.tables.table import Table
    from uiaa_cli.tables.writers import write_table
    from uiaa_cli.targets.labels import LabelSettings, build_labels

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, size=(n, 10)).astype(float) + np.eye(10)[rng.integers(0, 10, n)]
    images = np.array([f"{i:06d}" for i in range(n)])
    labels, _ = build_labels(images, counts, np.arange(1.0, 11.0), LabelSettings())
    write_table(labels, tmp / "labels.csv")
    probs = rng.dirichlet(np.ones(10), n)
    preds = {"image": images[::-1].copy(), "score": probs @ np.arange(1.0, 11.0), "std": rng.random(n)}
    preds.update({f"p_{i + 1}": probs[:, i] for i in range(10)})
    write_table(Table(preds), tmp / "preds.csv")
    return tmp / "preds.csv", tmp / "labels.csv"


def in_process_evaluate(preds: Path, labels: Path) -> float:
    """Seconds of reading both tables and computing every metric, after the imports."""
    from uiaa_cli.evaluation import as_text, evaluate_tables
    from uiaa_cli.tables.table import read_table

    def once() -> None:
        as_text(evaluate_tables(read_table(preds), read_table(labels)))

    once()
    return best_of(once, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    uiaa = uiaa_exe()
    repeat = 1 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preds, labels = make_evaluation_tables(tmp, 20_000)
        help_s = min(first_output([uiaa, "--help"]) for _ in range(repeat))
        labels_s = min(first_output([uiaa, "labels", "-"], AVA_LINE.encode()) for _ in range(repeat))
        evaluate_s = min(first_output([uiaa, "evaluate", str(preds), str(labels)]) for _ in range(repeat))
        python_s = min(first_output([sys.executable, "-c", "print(1)"]) for _ in range(repeat))
        work = in_process_evaluate(preds, labels)
        light = ("uiaa_cli.cli.app", "uiaa_cli.targets.labels", "uiaa_cli.targets.ratings", "uiaa_cli.tables.table",
                 "uiaa_cli.tables.writers", "uiaa_cli.evaluation", "uiaa_cli.metrics")
        torch_free = subprocess.run(
            [sys.executable, "-c", f"import sys; import {', '.join(light)}; print('torch' in sys.modules)"],
            capture_output=True, text=True).stdout.strip() == "False"
    ok = report("start-up and evaluate", [
        ("python -c 'print(1)' (for scale)", f"{python_s:.3f} s", "", True),
        ("uiaa --help, to first output", f"{help_s:.3f} s", "< 0.5 s", help_s < 0.5),
        ("uiaa labels (1 AVA line on stdin), to first output", f"{labels_s:.3f} s", "< 0.5 s", labels_s < 0.5),
        ("uiaa evaluate 20,000 rows, to first output", f"{evaluate_s:.3f} s", "", True),
        ("evaluate 20,000 rows after start-up (read+join+metrics)", f"{work:.3f} s", "< 0.5 s", work < 0.5),
        ("labels/evaluate/convert modules import torch", "no" if torch_free else "yes", "no", torch_free),
    ])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
