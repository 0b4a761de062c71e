"""benchmarks/bench_gpu.py --smoke: every row of the GPU check runs on CPU, without typer or rich, so the
script cannot rot while no GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_bench_gpu_smoke_runs_every_row_without_typer_or_rich(tmp_path: Path) -> None:
    # The GPU machine may lack typer and rich: any import of them fails here (and leaves a mark).
    fake, marker = tmp_path / "absent", tmp_path / "imported"
    for name in ("typer", "rich"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(
            f"open({str(marker)!r}, 'a').write('{name}\\n')\nraise ImportError('{name} is absent in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not marker.exists(), marker.read_text()
    lines = done.stdout.splitlines()
    table = [line for line in lines if line[:2] in ("a ", "b ", "c ", "d ", "e ")]
    assert sorted({line[0] for line in table}) == ["a", "b", "c", "d", "e"], done.stdout
    assert not any("FAILED" in line or "skipped" in line for line in table), done.stdout
    # (a) at both sizes; (b) set against (a); (c) both loaders; (d) whole and forward; (e) a duration
    assert sum(line.startswith("a ") for line in table) == 2
    assert "of (a) at 40 px" in next(line for line in table if line.startswith("b "))
    assert any("CPU worker" in line for line in table) and any("decode_jpeg" in line for line in table)
    assert "of forward-only" in next(line for line in table if line.startswith("d "))
    e = next(line for line in table if line.startswith("e "))
    assert (" min " in e or " h " in e) and "train" in e and "test" in e
