"""Helpers shared by the benchmarks: timing, machine description, tables of results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
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


def report(title: str, rows: list[tuple[str, str, str, bool | None]]) -> bool:
    """Print ``what | measured | bar | PASS/FAIL`` rows (``ok`` None: a figure reported, no bar);
    True if every bar is met."""
    print(f"\n{title}\nmachine: {machine()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'measured':>22}  {'bar':>14}  result")
    for what, measured, bar, ok in rows:
        print(f"{what:<{width}}  {measured:>22}  {bar:>14}  {'' if ok is None else 'PASS' if ok else 'FAIL'}")
    return all(r[3] is not False for r in rows)


class TreeMemory:
    """Peak memory of a running process and its children, sampled in a thread every ``every`` seconds
    while the ``with`` block runs: ``peak`` (summed RSS, bytes), ``peak_pss`` (summed PSS, which
    counts pages shared between forked processes once; read only with ``pss=True``, it is slower)
    and ``own`` (the process's own peak RSS, the kernel's VmHWM)."""

    def __init__(self, pid: int, every: float = 0.005, pss: bool = False) -> None:
        import psutil

        self.root, self.every, self.pss = psutil.Process(pid), every, pss
        self.peak = self.peak_pss = self.own = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        while not self._done.is_set():
            rss = pss = 0
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    info = p.memory_full_info() if self.pss else p.memory_info()
                    rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
                status = Path(f"/proc/{self.root.pid}/status").read_text()
                self.own = max(self.own, int(status.split("VmHWM:")[1].split()[0]) * 1024)
            except (psutil.Error, OSError, IndexError):
                pass  # a process ended between listing and reading: this sample is dropped
            else:
                self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self._done.wait(self.every)
