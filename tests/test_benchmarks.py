"""Every benchmark script imports: what it takes from the library and from the other scripts still
exists. (bench_int8 imported a function that bench_predict no longer had, and nothing noticed: the
suite runs no benchmark but bench_gpu's smoke run.)"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")))
def test_every_benchmark_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [name])
    module = importlib.import_module(name)
    assert callable(module.main)
