"""``uiaa labels`` on 255,530 AVA rows: the whole command against a per-row Python reference, and
the CSV writers we could have used (why pyarrow).

Bars (SPEC §4): whole command under 2 s; at least 5x the per-row reference (csv module); peak
memory flat (within 10%) from N to 10N rows.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA, best_of, report, uiaa_exe

ROWS = 255_530


def make_ava(path: Path, rows: int) -> None:
    """Repeat the real AVA sample with new indices and ids up to ``rows`` lines."""
    tails = [line.split(None, 2)[2] for line in (SHARED_DATA / "AVA_sample.txt").read_text().splitlines()
             if line.strip()]
    with open(path, "w") as f:
        for start in range(0, rows, len(tails)):
            block = tails[: rows - start]
            f.write("\n".join(f"{start + i + 1} {1_000_000 + start + i} {tail}" for i, tail in enumerate(block)))
            f.write("\n")


def per_row_reference(src: Path, dst: Path, lam: float = 0.5, cap: float = 1.5) -> None:
    """The straightforward implementation: a Python loop over lines, written with the csv module."""
    bins = range(1, 11)
    with open(src) as f, open(dst, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image", "votes", "mean", "std", *map(str, bins), *(f"p_{b}" for b in bins)])
        for line in f:
            parts = line.split()
            if not parts:
                continue
            counts = [int(c) for c in parts[2:12]]
            n = sum(counts)
            rsd = [c / n for c in counts]
            mu = sum(b * y for b, y in zip(bins, rsd))
            var = sum(y * (b - mu) ** 2 for b, y in zip(bins, rsd))
            var_z = min((1 - lam) * var, cap)
            if var_z > 0:
                w = [math.exp(-((b - mu) ** 2) / (2 * var_z)) for b in bins]
            else:
                w = [1.0 if abs(b - mu) == min(abs(c - mu) for c in bins) else 0.0 for b in bins]
            s = sum(w)
            writer.writerow([parts[1], n, mu, math.sqrt(var), *rsd, *(x / s for x in w)])


def peak_rss_mb(command: list[str]) -> float:
    """Peak resident memory of ``command`` (MB), measured in a fresh process that only waits for it."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def writer_times(path: Path) -> dict[str, float]:
    """Seconds to write the same 255k x 24 labels table with pandas and with pyarrow."""
    import pandas as pd

    from uiaa_cli.tables.table import read_table
    from uiaa_cli.tables.writers import write_table

    table = read_table(path)
    frame = pd.DataFrame(table.columns)
    out = path.with_suffix(".w.csv")
    return {"pandas to_csv": best_of(lambda: frame.to_csv(out, index=False), 1),
            "pyarrow (uiaa tables)": best_of(lambda: write_table(table, out), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--quick", action="store_true", help="25,553 rows, no writer comparison")
    args = parser.parse_args()
    rows = ROWS // 10 if args.quick else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "AVA.txt"
        make_ava(src, rows)
        uiaa = [uiaa_exe(), "labels", str(src), "-o", str(tmp / "labels.csv"), "-q"]
        command = best_of(lambda: subprocess.run(uiaa, check=True), 3)
        t = time.perf_counter()
        per_row_reference(src, tmp / "reference.csv")
        reference = time.perf_counter() - t
        ours = np.loadtxt(tmp / "labels.csv", delimiter=",", skiprows=1, usecols=range(1, 24), max_rows=1000)
        theirs = np.loadtxt(tmp / "reference.csv", delimiter=",", skiprows=1, usecols=range(1, 24), max_rows=1000)
        assert np.allclose(ours, theirs, atol=1e-12), "uiaa and the reference disagree"
        rows_out = [
            (f"uiaa labels, {rows:,} rows (whole command)", f"{command:.2f} s", "< 2 s", command < 2.0),
            ("per-row Python + csv module", f"{reference:.2f} s", "", True),
            ("speed-up over the per-row reference", f"{reference / command:.1f}x", ">= 5x",
             reference / command >= 5),
        ]
        if not args.quick:
            for name, seconds in writer_times(tmp / "labels.csv").items():
                rows_out.append((f"write the table: {name}", f"{seconds:.2f} s", "", True))
            big = tmp / "AVA10.txt"
            make_ava(big, rows * 10)
            small_mb = peak_rss_mb(uiaa)
            big_mb = peak_rss_mb([uiaa_exe(), "labels", str(big), "-o", str(tmp / "labels10.csv"), "-q"])
            rows_out.append((f"peak memory, {rows:,} / {rows * 10:,} rows", f"{small_mb:.0f} / {big_mb:.0f} MB",
                             "<= 1.10x", big_mb <= 1.10 * small_mb))
        ok = report("labels: 255,530 AVA rows, gauss-mv, CSV out", rows_out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
