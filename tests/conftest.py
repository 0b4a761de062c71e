"""Shared fixtures: the real ``uiaa`` command in a subprocess, and the real rating files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UIAA_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_uiaa(*args: str, input: bytes | None = None, cwd: Path | None = None, env: dict | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m uiaa_cli ARGS`` and capture bytes (stdout) and text (stderr)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "uiaa_cli", *map(str, args)], input=input, cwd=cwd,
                          env=full_env, capture_output=True, timeout=timeout)


@pytest.fixture
def uiaa():
    return run_uiaa


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "AVA_sample.txt").exists():
        pytest.fail(f"the project's rating files are missing: {SHARED_DATA} (set UIAA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def no_torch(tmp_path: Path) -> dict:
    """An environment in which ``import torch`` fails, as on a machine without torch."""
    fake = tmp_path / "no_torch"
    for name in ("torch", "torchvision"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is absent in this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private $XDG_CACHE_HOME for the whole run (predict keeps ONNX graphs there), inherited by the
    commands the tests run, so tests never write to the real ~/.cache."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder
