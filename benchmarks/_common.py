"""Helpers shared by the benchmarks: timing, machine description, tables of results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UIAA_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs (seconds): the least disturbed by a shared machine."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_uiaa(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uiaa_cli", *map(str, args)], capture_output=True, check=True,
                          **kwargs)


def uiaa_exe() -> str:
    """The installed console script beside this Python (what a user runs)."""
    exe = Path(sys.executable).with_name("uiaa")
    return str(exe) if exe.exists() else "uiaa"


def report(title: str, rows: list[tuple[str, str, str, bool]]) -> bool:
    """Print ``what | measured | bar | PASS/FAIL`` rows; True if every bar is met."""
    print(f"\n{title}\nmachine: {machine()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'measured':>22}  {'bar':>14}  result")
    for what, measured, bar, ok in rows:
        print(f"{what:<{width}}  {measured:>22}  {bar:>14}  {'PASS' if ok else 'FAIL'}")
    return all(r[3] for r in rows)
